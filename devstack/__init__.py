"""The local stack, for development, tests and demos; nothing in production imports it.

``broker.py`` launches a real single-node Kafka from the Maven jars (``make kafka-up``, the tests);
``supervisor.py`` starts processes in order, restarts the dead and stops them all; ``up.py`` is
``skuforge up`` (Kafka, topics, Triton, every stage of the flow, the console); ``demo/`` is
``skuforge demo`` (SKUs through the running stack, then a summary and an HTML report).
"""
