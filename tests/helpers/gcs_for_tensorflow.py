"""A GCS that TensorFlow's own gs:// filesystem can reach offline (a test harness, not part of the project).

Usage: python tests/helpers/gcs_for_tensorflow.py EMULATOR_PORT PROXY_PORT CERT_PEM KEY_PEM

TensorFlow's GCS filesystem has its endpoints (https://www.googleapis.com/..., storage.googleapis.com) compiled in
and reads no emulator variable, but its libcurl honours HTTPS_PROXY and CURL_CA_BUNDLE, and it takes
GOOGLE_AUTH_TOKEN_FOR_TESTING (with NO_GCE_CHECK=true) as its token. So this process runs:
  - gcp-storage-emulator (in memory) on 127.0.0.1:EMULATOR_PORT, with four adjustments for libcurl's requests:
    a resumable PUT carrying both `Transfer-Encoding: chunked` and `Content-Length` is read as chunked (RFC 7230
    3.3.3), an empty media upload (TensorFlow's `dir/` markers) is an empty object rather than a crash, the
    resumable session's Location is https, as the real service answers, and `Expect: 100-continue` is answered;
  - a CONNECT proxy on 127.0.0.1:PROXY_PORT that terminates TLS for *.googleapis.com with CERT_PEM (signed by a
    throw-away CA the test made) and forwards the plain HTTP to the emulator.
"""

import select
import socket
import socketserver
import ssl
import sys
import threading

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.handlers import objects


def _read_raw_data(handler):
    if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
        data = bytearray()  # appended in place: a checkpoint of VGG16 arrives in thousands of chunks
        while True:
            size = int(handler.rfile.readline().strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return bytes(data)
            data += handler.rfile.read(size)
            handler.rfile.readline()
    length = handler.headers.get("Content-Length")
    return handler.rfile.read(int(length)) if length else None


emulator._read_raw_data = _read_raw_data
_media_upload = objects._media_upload
_create_resumable_upload = objects._create_resumable_upload


def _empty_media_upload(request, response, storage):
    if request.data is None:
        request._data = b""
    return _media_upload(request, response, storage)


def _https_resumable_upload(request, response, storage):
    result = _create_resumable_upload(request, response, storage)
    if "Location" in response._headers:
        response["Location"] = response["Location"].replace("http://", "https://", 1)
    return result


objects._media_upload = _empty_media_upload
objects._create_resumable_upload = _https_resumable_upload
_parse_request = emulator.RequestHandler.parse_request


def _parse_request_answering_expect(handler):
    """libcurl sends `Expect: 100-continue` before a body and waits a second for the answer, which an HTTP/1.0
    server never gives: answer it, so that every upload does not cost a second."""
    ok = _parse_request(handler)
    if ok and (handler.headers.get("Expect") or "").lower() == "100-continue":
        handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        handler.wfile.flush()
    return ok


emulator.RequestHandler.parse_request = _parse_request_answering_expect


class Tunnel(socketserver.BaseRequestHandler):
    """CONNECT host:443 -> TLS with the test's certificate -> plain bytes to the emulator and back."""

    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        if not head.startswith(b"CONNECT "):
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        client = self.server.tls.wrap_socket(self.request, server_side=True)
        upstream = socket.create_connection(("127.0.0.1", self.server.emulator_port))
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 60)
                if not ready:
                    return
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
                while client.pending():  # TLS may hold decrypted bytes that select cannot see
                    upstream.sendall(client.recv(65536))
        except (OSError, ssl.SSLError):
            return
        finally:
            upstream.close()


class Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    emulator_port, proxy_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    storage = emulator.create_server("127.0.0.1", emulator_port, in_memory=True)
    storage.start()
    proxy = Proxy(("127.0.0.1", proxy_port), Tunnel)
    proxy.emulator_port = emulator_port
    proxy.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    proxy.tls.load_cert_chain(cert, key)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
