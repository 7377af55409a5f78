"""finops"""
