"""NanoMQ conformance kit: tests any broker that speaks wire protocol v1, over the wire only.

It imports nothing of the reference broker: only the sans-IO codec ``nanomq.protocol``.
"""
