"""One router per resource; handlers stay thin."""
