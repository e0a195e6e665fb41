"""A webhook endpoint on loopback for AEGIS's channel tests (issue #20).

It checks every delivery with the Standard Webhooks reference library
(`standardwebhooks` from PyPI), an implementation independent of AEGIS's, and also
checks that the same library refuses the delivery with one byte of the body changed
and with another key, so a test cannot pass on a verifier that accepts anything.

Protocol (line based):
  stdout, first line: `listening <port>`
  stdin:  `secret <whsec_…>`   the channel's signing secret (known after the channel is made)
          `fail <n>`           answer 500 to the next n deliveries
  stdout, per delivery: one JSON object: id, timestamp, type, verified, tampered_rejected,
          wrong_key_rejected, answered (the status it sent), body (parsed JSON or null).
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

state = {"secret": None, "fail": 0}
lock = threading.Lock()
OTHER_KEY = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="


def verifies(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except WebhookVerificationError:
        return False


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k: v for k, v in self.headers.items()}
        with lock:
            secret = state["secret"]
            answer = 200
            if state["fail"] > 0:
                state["fail"] -= 1
                answer = 500
        tampered = bytearray(body)
        if tampered:
            tampered[-2] ^= 0x01
        record = {
            "id": self.headers.get("webhook-id"),
            "timestamp": self.headers.get("webhook-timestamp"),
            "verified": secret is not None and verifies(secret, body, headers),
            "tampered_rejected": secret is not None and not verifies(secret, bytes(tampered), headers),
            "wrong_key_rejected": not verifies(OTHER_KEY, body, headers),
            "answered": answer,
        }
        try:
            record["body"] = json.loads(body)
            record["type"] = record["body"].get("type")
        except ValueError:
            record["body"] = None
            record["type"] = None
        self.send_response(answer)
        self.send_header("content-length", "0")
        self.end_headers()
        print(json.dumps(record), flush=True)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        with lock:
            if cmd == "secret":
                state["secret"] = arg
            elif cmd == "fail":
                state["fail"] = int(arg)
        print(json.dumps({"ack": cmd}), flush=True)


if __name__ == "__main__":
    main()
