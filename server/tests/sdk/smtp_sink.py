"""A local SMTP server for AEGIS's email tests (issue #20), with aiosmtpd from PyPI.

It accepts every message and reports it; AEGIS talks to it as to any SMTP relay
(AEGIS_SMTP_URL=smtp://127.0.0.1:<port>).

Protocol (line based):
  stdout, first line: `listening <port>`
  stdout, per message: one JSON object: mail_from, rcpt_tos (the envelope), subject,
          to, bcc (the header, if the message carried one), text (the plain-text body).
  Runs until its stdin closes.
"""

import email
import json
import socket
import sys
from email import policy

from aiosmtpd.controller import Controller


class Sink:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        body = message.get_body(preferencelist=("plain",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": sorted(envelope.rcpt_tos),
            "subject": str(message["subject"] or ""),
            "to": str(message["to"] or ""),
            "bcc": None if message["bcc"] is None else str(message["bcc"]),
            "text": body.get_content() if body is not None else "",
        }
        print(json.dumps(record), flush=True)
        return "250 OK"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port = free_port()
controller = Controller(Sink(), hostname="127.0.0.1", port=port)
controller.start()
print(f"listening {port}", flush=True)
try:
    sys.stdin.read()
finally:
    controller.stop()
