"""The reference NanoMQ broker: one asyncio process serving topics stored in the C log."""

from nanomq.broker.config import BrokerConfig, default_data_dir
from nanomq.broker.server import Broker, BrokerLockedError, run

__all__ = ["Broker", "BrokerConfig", "BrokerLockedError", "default_data_dir", "run"]
