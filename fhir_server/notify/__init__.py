"""Notifications: the patient's notification centre (Communication), the transactional outbox, email over
SMTP, rest-hook delivery and R4 Subscriptions (docs/notifications.md)."""
