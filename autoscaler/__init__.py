"""autoscaler"""
