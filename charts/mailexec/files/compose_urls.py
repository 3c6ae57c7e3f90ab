# Run by the initContainer "urls" of every pod that talks to PostgreSQL or RabbitMQ (the
# mailexec image, python3 -c): writes the pod's own connection URLs, built from the chart's
# externalDatabase/externalRabbitmq values and the password files of its Secret volume, to
# OUT_DIR (an in-memory emptyDir), mode 0400, for MAILEXEC_DATABASE_URL_FILE and
# MAILEXEC_AMQP_URL_FILE (SPEC section 2). No URL with a password is ever in a Secret, a
# value or an environment variable.
import os, sys
from urllib.parse import quote

out = os.environ["OUT_DIR"]


def secret(path):
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().rstrip("\r\n")
    except OSError as exc:
        sys.exit("mailexec: cannot read %s: %s" % (path, exc.strerror))
    if not value:
        sys.exit("mailexec: %s is empty" % path)
    return value


def write(name, url):
    path = os.path.join(out, name)
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(url + "\n")
    print("wrote %s" % path)


def host(name):
    value = e[name]
    return "[%s]" % value if ":" in value and not value.startswith("[") else value


e = os.environ
if e.get("DB_HOST"):
    write("database_url", "postgresql+asyncpg://%s:%s@%s:%s/%s" % (
        quote(e["DB_USER"], safe=""), quote(secret(e["DB_PASSWORD_FILE"]), safe=""),
        host("DB_HOST"), e["DB_PORT"], quote(e["DB_NAME"], safe="")))
if e.get("AMQP_HOST"):
    write("amqp_url", "amqp%s://%s:%s@%s:%s/%s" % (
        "s" if e.get("AMQP_TLS") == "true" else "",
        quote(e["AMQP_USER"], safe=""), quote(secret(e["AMQP_PASSWORD_FILE"]), safe=""),
        host("AMQP_HOST"), e["AMQP_PORT"],
        "" if e.get("AMQP_VHOST", "/") == "/" else quote(e["AMQP_VHOST"], safe="")))
