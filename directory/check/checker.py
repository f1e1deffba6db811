"""The publication checker: which certificates to look at, the probes, and what disagrees right now.

A cycle (every ``[check] interval``, on a thread of its own) looks at:
- every certificate whose status changed within ``recent`` (the registry's change log), by GET and POST
  with a SHA-1 CertID, and once per change (its grace over) with SHA-256 CertIDs too;
- certificates that disagreed at the last look (so a repaired one clears);
- the next slice of the rolling sample, sized so that every certificate is looked at at least once per
  ``full_cycle`` (cursor kept in the registry: a restart continues where it was), with the SHA-1 CertID
  RFC 5019 clients send (SHA-256 too when clients asked for it).
The issuer's served CRLs are fetched every cycle (conditional GET, parsed once per content); the
directory is searched in batches. The registry is read again after the probes: a change made meanwhile
is newer than every answer and within its allowance.
"""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from directory.check import compare
from directory.check.crl_probe import CrlProbe
from directory.check.http import HttpClient
from directory.check.ldap_probe import LdapProbe, LdapTrouble
from directory.check.model import CHANNELS, Finding, Trouble
from directory.check.ocsp_probe import OcspProbe, Variant
from directory.config import CheckConfig, Config
from directory.inputs import format_time
from directory.registry import Registry
from directory.registry.checks import REPORT_PREFIX, CertificateFacts, CheckReads

log = logging.getLogger(__name__)
RECENT_LIMIT = 200  # recently changed certificates looked at per cycle (the longest unseen first)
SUSPECT_LIMIT = 200  # certificates that disagreed, looked at again per cycle
# certificates per cycle asked about with every OCSP variant: a SHA-256 CertID nobody asked for goes with a
# nonce (signed live, not cached), so this bounds the HSM signatures the checker costs
THOROUGH_LIMIT = 10
MAX_FINDINGS = 10_000  # disagreements remembered (beyond: counted, not kept)
REPORT_EVERY = 30.0  # seconds between two writes of an unchanged report to the registry
SHA1 = (Variant("GET", "sha1", False), Variant("POST", "sha1", False))


def default_url(config: Config) -> str:
    """This node's own public listener (the checker vouches for the node it runs in)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.http.host, config.http.host)
    return f"http://[{host}]:{config.http.port}" if ":" in host else f"http://{host}:{config.http.port}"


@dataclass
class CheckStats:
    cycles: int = 0
    checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0))
    troubles: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0))
    cpu_seconds: float = 0.0
    last_cycle: float = 0.0
    last_seconds: float = 0.0
    crl_parses: int = 0


@dataclass
class Outcome:
    findings: list[Finding]
    troubles: list[Trouble]
    certificates: int
    looked: set[tuple[str, str, str, str | None]] = field(default_factory=set)  # channel, issuer, serial, where
    ids: dict[tuple[str, str], int] = field(default_factory=dict)  # (issuer, serial) -> certificate id


class PublicationChecker:
    def __init__(self, config: Config, registry: Registry, settings: CheckConfig | None = None,
                 url: str | None = None, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.settings = settings or config.check
        self.clock = clock
        self.http = HttpClient(url or self.settings.url or default_url(config))
        self.ocsp = OcspProbe(self.http, config.issuers)
        self.crl = CrlProbe(self.http, config.issuers, self.settings.crl_margin)
        self.ldap = None
        layout = None
        if config.ldap is not None:
            from directory.ldap.projection import Layout

            layout = Layout.from_config(config.ldap).digest
            self.ldap = LdapProbe(config.ldap, anonymous=self.settings.ldap_bind == "anonymous")
        self.reads = CheckReads(registry, layout)
        self.registry = registry
        self.node = f"{socket.gethostname()}:{config.http.port}"
        self.stats = CheckStats()
        self.current: dict[tuple[str, str, str, str], Finding] = {}
        self.suspects: dict[int, tuple[str, str]] = {}  # certificate id -> (issuer, serial) disagreeing now
        self.recent: dict[int, float] = {}  # certificate id -> time of its latest status change
        self._looked: dict[int, float] = {}  # recent and suspect certificates -> when last looked at
        self._thorough: dict[int, float] = {}  # recent certificates -> the change their every-variant look saw
        self.troubles: list[Trouble] = []
        self.failing: set[tuple[str, str]] = set()  # (channel, issuer) that did not answer at the last look
        # what readers on other threads see (metrics, /readyz): replaced whole, never mutated
        self.snapshot: tuple[dict[str, int], tuple[Finding, ...]] = (dict.fromkeys(CHANNELS, 0), ())
        self.stopping = threading.Event()
        self.both_methods = False  # the sample by GET and by POST (`annuaire check publication`), not alternately
        self._seq: int | None = None
        self._cursor: int | None = None
        self._count: tuple[float, int] = (0.0, 0)
        self._reported: tuple[float, str] = (0.0, "")
        self._subjects: set[tuple[str, str, str]] = set()

    # -- one look at a set of certificates -------------------------------------------------------------
    def check(self, ids: Sequence[int], thorough: Iterable[int] = ()) -> Outcome:
        """Probe every channel for ``ids`` (all OCSP variants for ``thorough`` ones) and judge."""
        thorough = set(thorough)
        now = self.clock()
        findings: list[Finding] = []
        troubles: list[Trouble] = []
        for issuer in self.crl.issuers:
            problems, down = self.crl.refresh(issuer, now)
            troubles += [Trouble("crl", issuer, t) for t in down]
            findings += [Finding("crl", issuer, None, "a valid, current CRL", p, name) for name, p in problems]
            findings += self._crl_numbers(issuer, now)
        configured = self.crl.issuers  # a registry may still hold an issuer no longer configured: not published
        before = {cid: f for cid, f in self.reads.facts(ids).items() if f.issuer in configured}
        answers = {}
        for cid, facts in before.items():
            if self.stopping.is_set():
                break
            if facts.issuer in self.ocsp.issuers:
                answers[cid] = self.ocsp.answers(facts.issuer, int(facts.serial_hex, 16),
                                                 self._variants(facts, cid in thorough), now)
        present, ldap_where = self._directory(before.values(), troubles)
        now = self.clock()
        after = self.reads.facts(list(before))
        for cid, facts in after.items():
            if cid in answers:
                found, down = compare.ocsp_verdicts(facts, answers[cid], self.settings, now)
                findings += found
                troubles += down
            findings += compare.crl_verdicts(facts, self.crl.views(facts.issuer, int(facts.serial_hex, 16)),
                                             self.settings, configured[facts.issuer].crl.keep_expired, now)
            if present is not None and facts.issuer in present:
                verdict = compare.ldap_verdict(facts, int(facts.serial_hex, 16) in present[facts.issuer],
                                               self.settings, ldap_where, now)
                if verdict is not None:
                    findings.append(verdict)
        # what was looked at: OCSP per variant answered, the other channels per certificate
        looked: set[tuple[str, str, str, str | None]] = {
            ("ocsp", f.issuer, f.serial_hex, str(a.variant)) for cid, f in after.items()
            for a in answers.get(cid, ()) if a.trouble is None}
        looked |= {("crl", f.issuer, f.serial_hex, None) for f in after.values()}
        looked |= {("ldap", f.issuer, f.serial_hex, None) for f in after.values() if present and f.issuer in present}
        for channel in CHANNELS:
            self.stats.checked[channel] += len({(i, s) for c, i, s, _ in looked if c == channel})
        for trouble in troubles:
            self.stats.troubles[trouble.channel] += 1
        self.stats.crl_parses = self.crl.parses
        return Outcome(findings, troubles, len(after), looked, {(f.issuer, f.serial_hex): c for c, f in after.items()})

    def _variants(self, facts: CertificateFacts, thorough: bool) -> list[Variant]:
        """Thorough: GET and POST, SHA-1 and SHA-256. The sample: the SHA-1 CertID RFC 5019 clients send (by GET
        or by POST, alternately: both reach the same pre-signed answer), and SHA-256 only when a client asked
        for it (asking would make the responder sign and keep one more answer nobody uses)."""
        if thorough:
            nonce = not facts.sha256_answer
            return [*SHA1, Variant("GET", "sha256", nonce), Variant("POST", "sha256", nonce)]
        if self.both_methods:
            return [*SHA1] + ([Variant("GET", "sha256", False)] if facts.sha256_answer else [])
        sample = [SHA1[facts.id % 2]]
        if facts.sha256_answer:
            sample.append(Variant(SHA1[1 - facts.id % 2].method, "sha256", False))
        return sample

    def _directory(self, facts: Iterable[CertificateFacts],
                   troubles: list[Trouble]) -> tuple[dict[str, set[int]] | None, str]:
        if self.ldap is None or not self.reads.directory_synchronised():
            return None, ""
        by_issuer: dict[str, list[int]] = {}
        for f in facts:
            if compare.directory_expectation(f, self.clock())[0] is not None:
                by_issuer.setdefault(f.issuer, []).append(int(f.serial_hex, 16))
        present: dict[str, set[int]] = {}
        for issuer, serials in by_issuer.items():
            try:
                present[issuer] = self.ldap.present(self.config.issuer(issuer).certificate.subject, serials)
            except LdapTrouble as exc:
                troubles.append(Trouble("ldap", issuer, str(exc)))
        return present, self.ldap.url or ""

    def _crl_numbers(self, issuer: str, now: float) -> list[Finding]:
        """A served CRL older than the newest one the registry records as published (copied back, stuck)."""
        out = []
        for target in self.crl.targets(issuer):
            served = self.crl.served.get(target.filename)
            record = self.registry.crl_latest(issuer, target.scope, target.kind)
            if served is None or record is None or served.number >= record.number:
                continue
            if now - record.this_update > self.settings.crl_margin:
                out.append(Finding("crl", issuer, None, f"number {record.number} or later (published "
                                   f"{format_time(record.this_update)})", f"number {served.number}", target.filename))
        return out

    # -- the served component's cycle --------------------------------------------------------------------
    def cycle(self) -> Outcome:
        """One cycle of the served checker: recent changes, suspects, the next sample slice."""
        started, cpu = time.monotonic(), time.thread_time()
        now = self.clock()
        self._follow_changes(now)
        looked = self._looked
        recent = sorted(self.recent, key=lambda c: looked.get(c, 0.0))[:RECENT_LIMIT]
        suspects = sorted(self.suspects, key=lambda c: looked.get(c, 0.0))[:SUSPECT_LIMIT]
        ids = list(dict.fromkeys([*recent, *suspects, *self._next_sample(now)]))
        # every OCSP variant: once per change when its grace is over, and for OCSP disagreements until cleared
        ocsp_suspects = {cid for cid in suspects if ("ocsp", *self.suspects[cid]) in self._subjects}
        due = [c for c in recent if self._thorough.get(c) != self.recent[c]
               and now - self.recent[c] > self.settings.ocsp_grace]
        thorough = list(dict.fromkeys([*ocsp_suspects, *due]))[:THOROUGH_LIMIT]
        try:
            outcome = self.check(ids, thorough)
        finally:
            self.http.close()  # no slot of the listener's connection cap held between cycles
        for cid in thorough:
            if cid in self.recent:
                self._thorough[cid] = self.recent[cid]
        self._settle(outcome)
        keep = self.recent.keys() | self.suspects.keys()
        self._looked = {c: t for c, t in looked.items() if c in keep} | {c: now for c in ids if c in keep}
        self._thorough = {c: t for c, t in self._thorough.items() if c in self.recent}
        self.stats.cycles += 1
        self.stats.cpu_seconds += time.thread_time() - cpu
        self.stats.last_cycle, self.stats.last_seconds = self.clock(), time.monotonic() - started
        self._save()
        return outcome

    def _follow_changes(self, now: float) -> None:
        if self._seq is None:
            self._seq = self.reads.first_change_since(now - self.settings.recent)
        while changes := self.reads.changes_after(self._seq):
            for seq, cid, at in changes:
                self.recent[cid] = at
                self._seq = seq
        horizon = now - self.settings.recent
        self.recent = {cid: at for cid, at in self.recent.items() if at >= horizon}

    def _next_sample(self, now: float) -> list[int]:
        if self._cursor is None:
            saved = self.reads.state_get(f"cursor:{self.node}")
            self._cursor = int(saved) if saved and saved.isdigit() else 0
        if now - self._count[0] > 600:
            self._count = (now, self.reads.certificate_count())
        size = max(1, math.ceil(self._count[1] * self.settings.interval / self.settings.full_cycle))
        ids = self.reads.next_ids(self._cursor, size)
        if len(ids) < size:  # the end: wrap around
            ids += [i for i in self.reads.next_ids(0, size - len(ids)) if i not in ids]
        if ids:
            self._cursor = ids[-1]
        return ids

    def _settle(self, outcome: Outcome) -> None:
        """Replace what we knew about the certificates just judged; log what appeared and what cleared."""
        fresh = {(*f.subject, f.where): f for f in outcome.findings}
        for key, finding in list(self.current.items()):
            looked = outcome.looked
            seen_again = (*finding.subject, None) in looked or (*finding.subject, finding.where) in looked
            if key not in fresh and (finding.serial_hex is None or seen_again):
                del self.current[key]
                log.info("publication agrees again: %s", finding.text(), extra=_extra(finding))
        for key, finding in fresh.items():
            if key in self.current:
                continue
            if len(self.current) >= MAX_FINDINGS:
                log.warning("publication check: more than %d disagreements, the others are not kept", MAX_FINDINGS)
                break
            self.current[key] = finding
            log.error("publication mismatch: %s", finding.text(), extra=_extra(finding))
        self._subjects = {f.subject for f in self.current.values()}
        bad = {(f.issuer, f.serial_hex) for f in self.current.values() if f.serial_hex}
        judged = set(outcome.ids.values())
        suspects = {cid: key for cid, key in self.suspects.items() if cid not in judged}
        suspects.update({cid: key for key, cid in outcome.ids.items() if key in bad})
        self.suspects = suspects
        failing = {(t.channel, t.issuer) for t in outcome.troubles}
        if self.stopping.is_set():
            return  # the listener closes before the checker stops: no answer then is no news
        for trouble in outcome.troubles:
            if (trouble.channel, trouble.issuer) not in self.failing:  # once when it starts, not every cycle
                self.failing.add((trouble.channel, trouble.issuer))
                log.warning("publication check gets no answer from %s of %s: %s", trouble.channel, trouble.issuer,
                            trouble.text, extra={"channel": trouble.channel, "issuer": trouble.issuer})
        for channel, issuer in self.failing - failing:
            log.info("publication check reads %s of %s again", channel, issuer,
                     extra={"channel": channel, "issuer": issuer})
        self.failing = failing
        self.troubles = outcome.troubles
        findings = tuple(sorted(self.current.values(), key=lambda f: (f.subject, f.where)))
        counts = dict.fromkeys(CHANNELS, 0)
        for channel, _, _ in {f.subject for f in findings}:
            counts[channel] += 1
        self.snapshot = (counts, findings)

    # -- what the service shows ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Things disagreeing now, per channel (a certificate, or a whole CRL file)."""
        return dict(self.snapshot[0])

    def summary(self) -> str | None:
        return summary_text(*self.snapshot)

    def report(self) -> dict[str, object]:
        counts, findings = self.snapshot
        return {"node": self.node, "at": self.clock(), "counts": counts,
                "findings": [f.as_dict() for f in findings[:20]], "total": len(findings),
                "text": summary_text(counts, findings)}

    def _save(self) -> None:
        """The report (for the page and `annuaire status`) and the sample cursor, into the registry: when
        the findings changed, else about every REPORT_EVERY seconds (a report that old is taken as stale)."""
        report = self.report()
        text = json.dumps(report["findings"], sort_keys=True)
        if text == self._reported[1] and self.clock() - self._reported[0] < REPORT_EVERY:
            return
        self.reads.state_set({f"cursor:{self.node}": str(self._cursor or 0),
                              REPORT_PREFIX + self.node: json.dumps(report, sort_keys=True)})
        self._reported = (self.clock(), text)

    # -- one pass from the command line --------------------------------------------------------------------
    def run_once(self, everything: bool, sample: int) -> Outcome:
        """``annuaire check publication``: recent changes and a sample (or every certificate)."""
        now = self.clock()
        self._follow_changes(now)
        self.both_methods = True
        findings: list[Finding] = []
        troubles: list[Trouble] = []
        total = 0
        if everything:
            batches: Iterable[list[int]] = self.reads.all_ids()
            thorough: set[int] = set(self.recent)
        else:
            count = self.reads.certificate_count()
            start = random.randrange(max(1, count - sample + 1)) if count > sample else 0
            batches = [list(dict.fromkeys([*self.recent, *self.reads.next_ids(start, sample)]))]
            thorough = set(self.recent)
        try:
            for ids in batches:
                outcome = self.check(ids, thorough)
                findings += outcome.findings
                troubles += outcome.troubles
                total += outcome.certificates
        finally:
            self.http.close()
            if self.ldap is not None:
                self.ldap.close()
        unique = {(*f.subject, f.where): f for f in findings}
        return Outcome(sorted(unique.values(), key=lambda f: (f.subject, f.where)), list(dict.fromkeys(troubles)),
                       total)

    def close(self) -> None:
        self.http.close()
        if self.ldap is not None:
            self.ldap.close()


def summary_text(counts: dict[str, int], findings: Sequence[Finding]) -> str | None:
    """One line for /readyz, the page and `annuaire status` (the same words everywhere)."""
    total = sum(counts.values())
    if not total:
        return None
    by_channel = ", ".join(f"{c} {n}" for c, n in counts.items() if n)
    shown = "; ".join(f.text() for f in findings[:3])
    more = f"; and {len(findings) - 3} more" if len(findings) > 3 else ""
    return f"the public channels disagree with the registry ({by_channel}): {shown}{more}"


def _extra(finding: Finding) -> dict[str, str]:
    return {"channel": finding.channel, "issuer": finding.issuer, "serial": finding.serial_hex or ""}
