# Run by the chart's pre-install/pre-upgrade hook Job <fullname>-secrets (the mailexec
# image, python3 -c). Makes sure the Secrets named in SECRETS_SPEC exist and hold their keys,
# WITHOUT EVER CHANGING A VALUE ALREADY STORED:
#   - a Secret that does not exist is created with fresh random values;
#   - a Secret that exists is kept; only keys it lacks are added (e.g. the database passwords
#     an install made by an older chart never had). Existing values are never rewritten, so
#     every render and every upgrade keeps the MTAs' token and the sessions' cookie key;
#   - a Secret an older release of the chart created (label app.kubernetes.io/managed-by:
#     Helm) is adopted: annotated helm.sh/resource-policy=keep, so the upgrade that drops it
#     from the templates does not delete it (Helm reads the live annotation before deleting).
# SECRETS_SPEC: JSON list of {"name", "labels", "generate": [key...], "copy": {key: [secret, key]}}.
# Talks to the API server with the Job's ServiceAccount token (Role: get/patch on these
# names, create on secrets). Standard library only.
import base64, json, os, secrets, ssl, string, sys, urllib.error, urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
API = os.environ.get("KUBERNETES_API") or "https://%s:%s" % (
    os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc"),
    os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
NAMESPACE = os.environ["NAMESPACE"]
ALPHABET = string.ascii_letters + string.digits


def call(method, path, body=None, content_type="application/json"):
    headers = {"Accept": "application/json"}
    token_file = os.environ.get("TOKEN_FILE", SA + "/token")
    if os.path.exists(token_file):
        headers["Authorization"] = "Bearer " + open(token_file).read().strip()
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = content_type
    req = urllib.request.Request(API + path, data=data, method=method, headers=headers)
    ctx = None
    if API.startswith("https:"):
        ctx = ssl.create_default_context(cafile=os.environ.get("CA_FILE", SA + "/ca.crt"))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def secret_path(name=""):
    return "/api/v1/namespaces/%s/secrets%s" % (NAMESPACE, "/" + name if name else "")


def get(name):
    status, body = call("GET", secret_path(name))
    if status == 404:
        return None
    if status != 200:
        sys.exit("mailexec: reading Secret %s: HTTP %s %s" % (name, status, body.get("message", "")))
    return body


def fresh():
    return "".join(secrets.choice(ALPHABET) for _ in range(48))


def b64(text):
    return base64.b64encode(text.encode()).decode()


def ensure(spec):
    name = spec["name"]
    current = get(name)
    have = (current or {}).get("data") or {}
    add = {}
    for key in spec.get("generate", []):
        if key not in have:
            add[key] = b64(fresh())
    for key, (source, source_key) in spec.get("copy", {}).items():
        if key not in have:
            found = ((get(source) or {}).get("data") or {}).get(source_key)
            if found is None:
                sys.exit("mailexec: Secret %s has no key %s to copy into %s" % (source, source_key, name))
            add[key] = found
    if current is None:
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": spec.get("labels", {}),
                             "annotations": {"helm.sh/resource-policy": "keep"}},
                "data": add}
        status, answer = call("POST", secret_path(), body)
        if status == 409:  # created meanwhile (a second hook run): never overwrite, look again
            return ensure(spec)
        if status not in (200, 201):
            sys.exit("mailexec: creating Secret %s: HTTP %s %s" % (name, status, answer.get("message", "")))
        print("created Secret %s (%s)" % (name, ", ".join(sorted(add))))
        return
    patch = {}
    if add:
        patch["data"] = add
    meta = current.get("metadata", {})
    helm_owned = (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == "Helm"
    if helm_owned and (meta.get("annotations") or {}).get("helm.sh/resource-policy") != "keep":
        patch["metadata"] = {"annotations": {"helm.sh/resource-policy": "keep"}}
    if patch:
        status, answer = call("PATCH", secret_path(name), patch, "application/merge-patch+json")
        if status != 200:
            sys.exit("mailexec: updating Secret %s: HTTP %s %s" % (name, status, answer.get("message", "")))
    print("kept Secret %s%s%s" % (
        name,
        "; added " + ", ".join(sorted(add)) if add else "",
        "; adopted from the previous release (helm.sh/resource-policy=keep)" if "metadata" in patch else ""))


for item in json.loads(os.environ["SECRETS_SPEC"]):
    ensure(item)
