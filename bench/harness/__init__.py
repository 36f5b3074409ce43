"""The shared bench harness: what every scenario beside it needs, and nothing scenario-specific.

    procs    start/stop a server as a user runs it, CPU pinning, CPU and RSS of a process tree
    load     wrk (installed if missing) driven by Lua scripts: fixed requests or a pool of bodies
    idp      a fake identity provider with a fresh real key pair, minting pools of distinct tokens
    service  a real `exchange serve` (or granian with the app factory) on SQLite or PostgreSQL
    crypto   the raw signature operations, timed: the floor under every JOSE step
    peer     panva oidc-provider, the stock peer, installed into bench/.peer/ with npm
    profile  py-spy over a running server or a command; samples grouped by step and by module
    inproc   the ASGI app from the factory, driven in-process (`--micro`): CPU per outcome
    report   Markdown tables and the exact command line

Scenarios talk to the service only through its public faces: HTTP, the CLI, the app factory
(`exchange.app:app_from_env`, what granian runs) and the public verifier API (`exchange.verify`).
"""
