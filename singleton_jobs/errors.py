"""Exceptions raised by singleton_jobs. Every one derives from :class:`SingletonJobsError`."""

from __future__ import annotations


class SingletonJobsError(Exception):
    """Root of every exception this library raises on purpose."""


class ConfigurationError(SingletonJobsError, ValueError):
    """A setting is invalid: the message names the field, its value and the fix."""


class LeaseStoreError(SingletonJobsError):
    """A backend could not read or write the lease (I/O error, timeout, server error).

    The elector treats it as a failed attempt and retries; it reaches user code only from
    direct calls on a store.
    """


class NotLeaderError(SingletonJobsError):
    """This replica is not the leader, and the caller asked to be told by an exception."""


class LeadershipLost(NotLeaderError):
    """This replica was the leader and no longer is."""
