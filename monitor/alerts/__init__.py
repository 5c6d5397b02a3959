"""Alerts: lifecycle, evidence chips and webhook deliveries."""
