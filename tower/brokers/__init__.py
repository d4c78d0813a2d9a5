"""How jobs reach the pilots of a site.

- broker: the Broker seam and its registry
- dbqueue: the database-queue broker (the embedded default)
- amqp: the RabbitMQ broker
"""
