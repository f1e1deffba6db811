"""One client connection's part in a hand-over (``directory/service/handover.py``): the bytes it carries from one
process to the other, and what becomes of the connection when the main process answers an offer.

A connection's gate (``listener._Gated``) holds a ``Transit`` only while a hand-over concerns it:

- carried in (the main process, a connection adopted): what the serving process read and did not answer, taken
  before anything read here, once the transport reads (``take``; ``before`` for a read that comes first);
- carried out (a serving process): the connection offered (``offer``), reading paused and no timer, until the
  main process answers (``answered``): taken, this process's descriptor is closed; refused, the bytes are
  answered here; not known (no answer in time, the main process's socket lost), closed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from directory.service.listener import _Gated


class Transit:
    """The bytes of ``gated`` in transit: ``carried`` (in, not taken yet) or ``passing`` (out, offered)."""

    __slots__ = ("carried", "gated", "passing")

    def __init__(self, gated: _Gated, carried: bytes | None = None, passing: bytes | None = None) -> None:
        self.gated, self.carried, self.passing = gated, carried, passing

    def _detach(self) -> None:
        """Nothing of this connection in transit any more: its gate lets go of this (unless it holds another)."""
        if self.gated.transit is self:
            self.gated.transit = None

    # -- carried in -------------------------------------------------------------------------------
    def take(self) -> None:
        """What a serving process handed over with the connection, taken now that the transport reads, not in
        ``connection_made``: uvloop starts reading once that returns, undoing any pause asked in it (ours, while a
        live answer is signed, or aiohttp's past its queue), and everything the client then sent was buffered
        here without bound. Bytes read before this runs wait behind these (``before``)."""
        gated = self.gated
        carried, self.carried = self.carried, None
        self._detach()
        transport = gated.transport
        if carried is not None and transport is not None and not transport.is_closing():
            gated.data_received(carried)

    def before(self, data: bytes) -> bytes:
        """``data`` read before the carried bytes were taken up: after them."""
        carried = self.carried
        if carried is None:
            return data
        self.carried = None
        self._detach()
        return carried + data

    # -- carried out ------------------------------------------------------------------------------
    @staticmethod
    def offer(gated: _Gated, rest: bytes) -> None:
        """Offer ``gated``'s connection and ``rest`` (its requests from a live one on) to the main process; reading
        paused, no timer, until it answers (``answered``). Not sent: answered here."""
        handover, transport = gated.gate.handover, gated.transport
        assert handover is not None and transport is not None
        transport.pause_reading()  # before the offer: not a byte more is read here once it is sent
        transit = Transit(gated, passing=rest)
        if not handover.offer(transit, rest):
            transport.resume_reading()
            gated.data_received(rest)
            return
        gated.transit = transit
        gated._stop_timer()

    def answered(self, taken: bool | None) -> None:
        """The main process's answer to ``offer``: taken, this process's descriptor is closed (a close, not a
        shutdown: the client's connection is the main process's now); refused, answered here. None: not known
        (no answer in time, the main process's socket lost), closed here, counted ``handover_unanswered`` (not
        ``handed_over``): the main process may serve it."""
        gated = self.gated
        rest, self.passing = self.passing, None
        self._detach()
        transport = gated.transport
        if rest is None or transport is None or transport.is_closing():
            return
        gate = gated.gate
        if taken is not False:
            if taken:
                gate.handed_over += 1
            else:
                gate.handover_unanswered += 1
            gate.held.discard(gated)
            gated.direct = None
            transport.close()  # nothing unsent (``ocsp.direct``: offered only then), nothing read since
            return
        transport.resume_reading()  # as ``_Gated._drained``: before taking up what waited
        gated.data_received(rest)
        if gate.stopping and gated.direct is not None and gated.answers is not None:  # as ``close_held``
            gated.answers.close_when_written()
