"""Screening records before anything is sent: prompt-injection patterns."""
