#!/usr/bin/env python3
"""A real SMTP server on loopback for the notification tests: aiosmtpd
(PyPI), optionally with STARTTLS required (a throwaway CA and server
certificate made with openssl) and a login required. Each message it takes
is appended to --out as one JSON line: envelope sender and recipients, the
raw message, whether TLS and a login were in force. Prints one JSON line
{"port": N, "ca": PATH} when it listens; runs until stdin closes or it is
killed. Lines also carry the decoded subject, Message-ID and body."""
import argparse
import email
import email.policy
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--starttls", action="store_true")
parser.add_argument("--user")
parser.add_argument("--password")
parser.add_argument("--refuse", action="store_true", help="answer 554 to every message")
args = parser.parse_args()


class Handler:
    async def handle_DATA(self, server, session, envelope):
        if args.refuse:
            return "554 Transaction failed: refused by the test"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with open(args.out, "a", encoding="utf-8") as out:
            out.write(json.dumps({
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "data": envelope.content.decode("utf-8", "replace"),
                "subject": str(parsed["subject"]),
                "message_id": str(parsed["message-id"]),
                "body": parsed.get_content(),
                "tls": session.ssl is not None,
                "authenticated": bool(session.authenticated),
            }) + "\n")
        return "250 Message accepted for delivery"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == args.user
        and auth_data.password.decode() == args.password
    )
    return AuthResult(success=ok)


def certificates(folder):
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    def run(*cmd):
        subprocess.run(cmd, check=True, cwd=folder, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", "/CN=process-factory-test-ca")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(folder, "ext.cnf"), "w") as ext:
        ext.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                  "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return os.path.join(folder, "ca.pem"), os.path.join(folder, "server.pem"), os.path.join(folder, "server.key")


with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]

folder = tempfile.mkdtemp(prefix="smtp-sink-")
kwargs = {}
ca = None
if args.starttls:
    ca, cert, key = certificates(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    kwargs.update(tls_context=context, require_starttls=True)
if args.user:
    kwargs.update(authenticator=authenticator, auth_required=True,
                  auth_require_tls=args.starttls)
controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
controller.start()
print(json.dumps({"port": port, "ca": ca}), flush=True)
try:
    sys.stdin.read()
finally:
    controller.stop()
