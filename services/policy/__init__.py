"""policy: the trusted-program registry, settings, accounts, user tokens and audit log.

Endpoints (roles) — SPEC §2 "policy", docs/internals.md "Who may call what":

    PUT    /v1/programs/{name}[?allow_interpreter=true]   admin (raw bytes, 201 new / 200 replaced)
    GET    /v1/programs, /v1/programs/{name}              admin, service
    GET    /v1/programs/{name}/content                    admin, service
    DELETE /v1/programs/{name}                            admin
    GET    /v1/settings                                   admin, service
    PATCH  /v1/settings                                   admin
    GET    /v1/status                                     admin, service
    GET    /v1/accounts?limit=&cursor=                    admin
    PUT    /v1/accounts/{address}                         admin (response carries warnings)
    GET    /v1/accounts/{address}                         admin, service, mta, user (own)
    DELETE /v1/accounts/{address}                         admin (revokes the account's tokens)
    GET    /v1/accounts/{address}/programs                admin, service, user (own)
    PUT    /v1/accounts/{address}/programs                admin, user (own)
    POST   /v1/accounts/{address}/tokens                  admin (token shown once)
    GET    /v1/accounts/{address}/tokens                  admin (metadata only)
    DELETE /v1/tokens/{id}                                admin
    GET    /v1/audit?limit=&cursor=&target=&kind=         admin

Every committed change writes an audit row in the same transaction and then publishes
a policy-changed event on the ``policy.changed`` fanout.
"""
