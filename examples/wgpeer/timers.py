"""WireGuard's timing constants, bundled so that a peer (or a test) can shorten them."""

from __future__ import annotations

from typing import Any, Final

import attrs

from .replay import REJECT_AFTER_MESSAGES

#: Initiate a new handshake once a key has sealed this many messages.
REKEY_AFTER_MESSAGES: Final = 1 << 60
#: The initiator starts a new handshake when its current key is this old (seconds).
REKEY_AFTER_TIME: Final = 120.0
#: No key is used, in either direction, once it is this old.
REJECT_AFTER_TIME: Final = 180.0
#: Keep retrying an unanswered handshake for this long.
REKEY_ATTEMPT_TIME: Final = 90.0
#: Wait this long (plus jitter) for a response before retrying.
REKEY_TIMEOUT: Final = 5.0
#: Up to a third of a second of random delay per retry, so peers do not retry in lockstep.
REKEY_TIMEOUT_JITTER: Final = 0.334
#: Answer received data with a keepalive if we have sent nothing for this long.
KEEPALIVE_TIMEOUT: Final = 10.0
#: At most one accepted initiation per peer per this interval.
HANDSHAKE_INITIATION_RATE: Final = 1 / 50
#: Packets held per peer while a handshake is in flight (wireguard-go's staged queue).
QUEUE_LIMIT: Final = 128


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


@attrs.frozen
class TimerConfig:
    """Timer and limit constants of one peer; the defaults are the protocol's."""

    rekey_after_messages: int = attrs.field(default=REKEY_AFTER_MESSAGES, validator=_positive)
    reject_after_messages: int = attrs.field(default=REJECT_AFTER_MESSAGES, validator=_positive)
    rekey_after_time: float = attrs.field(default=REKEY_AFTER_TIME, validator=_positive)
    reject_after_time: float = attrs.field(default=REJECT_AFTER_TIME, validator=_positive)
    rekey_attempt_time: float = attrs.field(default=REKEY_ATTEMPT_TIME, validator=_positive)
    rekey_timeout: float = attrs.field(default=REKEY_TIMEOUT, validator=_positive)
    rekey_timeout_jitter: float = attrs.field(default=REKEY_TIMEOUT_JITTER, validator=_non_negative)
    keepalive_timeout: float = attrs.field(default=KEEPALIVE_TIMEOUT, validator=_positive)
    handshake_initiation_rate: float = attrs.field(
        default=HANDSHAKE_INITIATION_RATE, validator=_non_negative
    )
    queue_limit: int = attrs.field(default=QUEUE_LIMIT, validator=_positive)

    @property
    def max_handshake_attempts(self) -> int:
        """Retries before giving up: as many REKEY_TIMEOUTs as fit in REKEY_ATTEMPT_TIME."""
        # The epsilon keeps divided-down times (90/k over 5/k) from flooring to one less.
        return int(self.rekey_attempt_time / self.rekey_timeout + 1e-9)

    @property
    def zero_keys_after(self) -> float:
        """Key material is erased this long after the last session was derived."""
        return 3 * self.reject_after_time

    @property
    def last_minute_rekey_age(self) -> float:
        """An initiator whose key reaches this age while receiving rekeys before it dies."""
        return self.reject_after_time - self.keepalive_timeout - self.rekey_timeout


def shortened(factor: float) -> TimerConfig:
    """All the time constants divided by *factor* (the "shortened rekey timer" option)."""
    if not factor > 0:
        raise ValueError(f"the factor must be positive, not {factor!r}")
    base = TimerConfig()
    return attrs.evolve(
        base,
        rekey_after_time=base.rekey_after_time / factor,
        reject_after_time=base.reject_after_time / factor,
        rekey_attempt_time=base.rekey_attempt_time / factor,
        rekey_timeout=base.rekey_timeout / factor,
        rekey_timeout_jitter=base.rekey_timeout_jitter / factor,
        keepalive_timeout=base.keepalive_timeout / factor,
    )
