"""The publication page's two languages: French by default (the CA's own), English on request.

``?lang=en`` / ``?lang=fr`` wins; otherwise the ``Accept-Language`` header (RFC 9110 §12.5.4: q-values,
``*``), read strictly and bounded (a header too long or malformed is ignored); neither: French.
Times are given both ways: an absolute UTC date and how long ago or ahead, in the page's language.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

LANGUAGES = ("fr", "en")
DEFAULT = "fr"
_MAX_HEADER = 1000
_RANGE = re.compile(r"^\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)\s*"
                    r"(?:;\s*q\s*=\s*(0(?:\.\d{0,3})?|1(?:\.0{0,3})?))?\s*$")


def choose(query: str | None, accept_language: str | None) -> str:
    """The page's language from ``?lang=`` then ``Accept-Language``; French when neither says."""
    if query in LANGUAGES:
        return query  # type: ignore[return-value]
    if not accept_language or len(accept_language) > _MAX_HEADER:
        return DEFAULT
    best, best_q = DEFAULT, 0.0
    for item in accept_language.split(",")[:32]:
        match = _RANGE.match(item)
        if not match:
            continue
        tag, q_text = match.group(1).lower(), match.group(2)
        q = float(q_text) if q_text else 1.0
        language = DEFAULT if tag == "*" else tag.split("-")[0]
        if language in LANGUAGES and q > best_q:  # equal weights: the first named wins
            best, best_q = language, q
    return best


T: dict[str, dict[str, str]] = {
    "title": {"fr": "Point de publication : certificats d'AC, LCR, OCSP, annuaire",
              "en": "Publication point: CA certificates, CRLs, OCSP, directory"},
    "heading": {"fr": "Point de publication", "en": "Certificate publication"},
    "intro": {"fr": "Certificats des autorités de certification, politiques de certification, listes de certificats "
                    "révoqués (LCR), répondeur OCSP et annuaire de cette autorité de certification.",
              "en": "CA certificates, certification policies, certificate revocation lists (CRLs), OCSP responder "
                    "and directory of this certification authority."},
    "other_language": {"fr": "English", "en": "Français"},
    "health": {"fr": "État", "en": "Health"},
    "all_good": {"fr": "Tous les canaux de publication sont à jour.", "en": "All publication channels are up to date."},
    "attention": {"fr": "Attention :", "en": "Attention needed:"},
    "cas": {"fr": "Autorités de certification", "en": "Certification authorities"},
    "subject": {"fr": "Sujet", "en": "Subject"},
    "ca_certificate": {"fr": "Certificat de l'AC", "en": "CA certificate"},
    "valid_until": {"fr": "valide jusqu'au", "en": "valid until"},
    "fingerprint": {"fr": "Empreinte {alg}", "en": "{alg} fingerprint"},
    "policies": {"fr": "Politiques de certification", "en": "Certification policies"},
    "no_policies": {"fr": "aucune publiée ici", "en": "none published here"},
    "ocsp": {"fr": "Répondeur OCSP", "en": "OCSP responder"},
    "ocsp_none": {"fr": "aucun pour cette AC : utilisez sa LCR", "en": "none for this CA: use its CRL"},
    "ocsp_methods": {"fr": "(RFC 6960, GET et POST)", "en": "(RFC 6960, GET and POST)"},
    "ocsp_signer": {"fr": "Certificat du répondeur OCSP", "en": "OCSP responder certificate"},
    "ocsp_signer_ca": {"fr": "le répondeur signe avec la clé de l'AC", "en": "the responder signs with the CA key"},
    "certificates": {"fr": "Certificats", "en": "Certificates"},
    "counts": {"fr": "{good} valides, {revoked} révoqués, {held} suspendus",
               "en": "{good} valid, {revoked} revoked, {held} suspended"},
    "crls": {"fr": "Listes de certificats révoqués (LCR)", "en": "Certificate revocation lists"},
    "crl": {"fr": "LCR", "en": "CRL"},
    "full": {"fr": "complète", "en": "full"},
    "delta": {"fr": "delta", "en": "delta"},
    "partition": {"fr": "partition {n}", "en": "partition {n}"},
    "download": {"fr": "Téléchargement", "en": "Download"},
    "number": {"fr": "Numéro", "en": "Number"},
    "published": {"fr": "Publiée (thisUpdate)", "en": "Published (thisUpdate)"},
    "next_update": {"fr": "Prochaine mise à jour", "en": "Next update"},
    "entries": {"fr": "Entrées", "en": "Entries"},
    "size": {"fr": "Taille", "en": "Size"},
    "not_published": {"fr": "pas encore publiée", "en": "not published yet"},
    "expired": {"fr": "expirée", "en": "expired"},
    "base": {"fr": "base", "en": "base"},
    "directory": {"fr": "Annuaire (LDAP)", "en": "Directory (LDAP)"},
    "servers": {"fr": "Serveurs", "en": "Servers"},
    "anonymous": {"fr": "Lecture anonyme des attributs publics.", "en": "Anonymous read of public attributes."},
    "generated": {"fr": "Page générée le {when}. Les mêmes données en JSON :",
                  "en": "Page generated {when}. The same data as JSON:"},
    "never": {"fr": "jamais", "en": "never"},
    # public health problems, by code (what relying parties may know; details are on the operator view)
    "crl-missing": {"fr": "{file} : pas encore publiée", "en": "{file}: not published yet"},
    "crl-expired": {"fr": "{file} : expirée (nextUpdate dépassé)", "en": "{file}: expired (nextUpdate passed)"},
    "crl-stale": {"fr": "{file} : nextUpdate proche et aucune LCR plus récente publiée",
                  "en": "{file}: nextUpdate is near and no newer CRL is published"},
    "hsm": {"fr": "signature momentanément indisponible : ce qui est publié reste valide jusqu'à sa prochaine mise "
                  "à jour ; les nouvelles LCR et réponses OCSP sont retardées",
            "en": "signing is unavailable for now: what is published stays valid until its next update; new CRLs "
                  "and OCSP answers are delayed"},
    "ldap": {"fr": "l'annuaire peut ne pas refléter encore les derniers changements",
             "en": "the directory may not show the latest changes yet"},
    "publication": {"fr": "un canal de publication ne reflète pas encore le registre ; les opérateurs en sont "
                          "informés", "en": "a publication channel does not say what the registry says yet; the "
                                            "operators are told"},
    "crl-served": {"fr": "une LCR n'est pas servie comme elle devrait l'être",
                   "en": "a CRL is not served as it should be"},
    "degraded": {"fr": "service dégradé", "en": "the service is degraded"},
}


def text(key: str, lang: str, **values: object) -> str:
    return T[key][lang].format(**values)


_UNITS = {"fr": (("an", "ans"), ("jour", "jours"), ("heure", "heures"), ("minute", "minutes"),
                 ("seconde", "secondes")),
          "en": (("year", "years"), ("day", "days"), ("hour", "hours"), ("minute", "minutes"), ("second", "seconds"))}


def duration(seconds: float, lang: str) -> str:
    """``3 jours`` / ``3 days``: the largest whole unit, the way people say it."""
    s = int(max(0, seconds))
    for (one, many), size in zip(_UNITS[lang], (365 * 86400, 86400, 3600, 60, 1), strict=True):
        if s >= size or size == 1:
            n = s // size
            return f"{n} {one if n == 1 else many}"
    raise AssertionError


def relative(epoch: float, now: float, lang: str) -> str:
    """``dans 3 jours`` / ``in 3 days``, ``il y a 5 minutes`` / ``5 minutes ago``."""
    delta = epoch - now
    if delta >= 1:  # under a second ahead (a CRL signed this second, dated to the whole second): "0 seconds ago"
        return f"dans {duration(delta, lang)}" if lang == "fr" else f"in {duration(delta, lang)}"
    past = max(0.0, -delta)
    return f"il y a {duration(past, lang)}" if lang == "fr" else f"{duration(past, lang)} ago"


def utc(epoch: float) -> str:
    """The absolute date, the same in both languages: ``2026-12-06 17:00:00 UTC``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(value: int | None, lang: str) -> str:
    if value is None:
        return "?"
    if lang == "fr":
        for unit, scale in (("Mo", 1_000_000), ("ko", 1_000)):
            if value >= scale:
                return f"{value / scale:.1f} {unit}".replace(".", ",")
        return f"{value} octets"
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} bytes"
