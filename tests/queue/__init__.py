"""The report service on a real task queue: RabbitMQ, PostgreSQL and Celery worker processes."""
