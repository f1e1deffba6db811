"""The peers our OCSP answer path is measured against (``bench/ocsp_answer.py``): a bare aiohttp handler
and ``cfssl ocspserve``, both serving the response bytes our service returned; and the wrk script."""

from __future__ import annotations

import base64
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cryptography.x509 import ocsp

# wrk: requests built once per thread (POST bodies from hex lines, or GET paths), one drawn at random each time
LUA = """
local method, target, built = os.getenv("METHOD"), os.getenv("TARGET"), {}
local function unhex(s) return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end)) end
init = function(args)
  for line in io.lines(os.getenv("LINES")) do
    if method == "POST" then
      built[#built + 1] = wrk.format("POST", target, {["Content-Type"] = "application/ocsp-request"}, unhex(line))
    else
      built[#built + 1] = wrk.format("GET", target .. line)
    end
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
request = function() return built[math.random(#built)] end
"""

# The ceiling of this stack: read the request, one dictionary look-up, one write (argv: port, table, loop).
BARE = """
import base64, json, sys, urllib.parse
from aiohttp import web
port, table, loop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
by_der = {bytes.fromhex(k): bytes.fromhex(v) for k, v in json.load(open(table)).items()}
by_path = {urllib.parse.quote(base64.b64encode(k).decode(), safe=""): v for k, v in by_der.items()}
default = next(iter(by_der.values()))
async def post(request):
    return web.Response(body=by_der.get(await request.read(), default), content_type="application/ocsp-response")
async def get(request):
    return web.Response(body=by_path.get(request.raw_path[6:], default), content_type="application/ocsp-response")
app = web.Application()
app.router.add_post("/ocsp", post)
app.router.add_get("/ocsp/{tail:.*}", get)
if loop == "uvloop":
    import uvloop
    event_loop = uvloop.new_event_loop()
else:
    import asyncio
    event_loop = asyncio.new_event_loop()
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=event_loop)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


def _status(body: bytes) -> str:
    try:
        return ocsp.load_der_ocsp_response(body).response_status.name
    except ValueError as exc:
        return f"not an OCSP response ({exc})"


def start_cfssl(work: Path, answers: dict[bytes, bytes], sample: bytes) -> tuple[subprocess.Popen[bytes], str, bool]:
    """``cfssl ocspserve`` over ``answers``' responses: (process, base URL, whether it answers GET too).

    Refuses to go on unless a POST of ``sample`` returns our very bytes (a successful response): a peer
    answering ``unauthorized`` to everything would be timed answering nothing.
    """
    responses = work / "cfssl-responses.txt"
    responses.write_text("".join(base64.b64encode(body).decode() + "\n" for body in answers.values()))
    port = free_port()
    log = (work / "cfssl.log").open("wb")
    proc = subprocess.Popen(["cfssl", "ocspserve", "-address", "127.0.0.1", "-port", str(port), "-responses",
                             str(responses), "-loglevel", "3"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_port(port)
        req = urllib.request.Request(base + "/", data=sample, headers={"Content-Type": "application/ocsp-request"})
        with urllib.request.urlopen(req, timeout=10) as answer:
            body = answer.read()
        if body != answers[sample]:
            raise RuntimeError(f"cfssl ocspserve answered a POST with something else than our response "
                               f"({_status(body)}): the comparison would be void")
        path = urllib.parse.quote(base64.b64encode(sample).decode(), safe="")
        try:
            with urllib.request.urlopen(f"{base}/{path}", timeout=10) as answer:
                get_ok = answer.read() == answers[sample]
        except urllib.error.HTTPError:
            get_ok = False
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return proc, base, get_ok


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")

