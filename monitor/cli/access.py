"""``monitor tokens`` (the HTTP API's bearer tokens) and ``monitor subscriptions`` (webhooks)."""

from __future__ import annotations

import typer

from monitor.alerts.webhooks import add_subscription, list_subscriptions, remove_subscription
from monitor.auth import create_token, list_tokens, revoke_token
from monitor.cli.common import echo_json, new_app, state, table
from monitor.redact import redact

tokens = new_app("Create, list and revoke the HTTP API's bearer tokens.")
subscriptions = new_app("Webhook subscriptions: where new and escalated alerts are POSTed.")


# --- tokens

@tokens.command("create")
def tokens_create(ctx: typer.Context, name: str = typer.Argument(..., help="Who or what the token is for."),
                  scope: str = typer.Option("read", "--scope", help="read (GET only) or write (read and change).")
                  ) -> None:
    """Make a token. It is printed once, alone on stdout; only its hash is stored."""
    with state(ctx).transaction() as session:
        row, token = create_token(session, name, scope)
        scopes = ",".join(row.scopes)
    typer.echo(f"token {name!r} ({scopes}); it is shown only now:", err=True)
    typer.echo(token)


@tokens.command("list")
def tokens_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List tokens (never the tokens themselves)."""
    with state(ctx).transaction() as session:
        rows: list[dict] = [{"id": t.id, "name": t.name, "scopes": list(t.scopes), "created_at": t.created_at.isoformat(),
                 "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None} for t in list_tokens(session)]
    if as_json:
        echo_json(rows)
    elif not rows:
        typer.echo("no tokens yet: make one with `monitor tokens create NAME --scope read|write`")
    else:
        typer.echo(table([(r["id"], r["name"], ",".join(r["scopes"]), r["created_at"][:19],
                           (r["revoked_at"] or "")[:19]) for r in rows],
                         ["id", "name", "scopes", "created", "revoked"]))


@tokens.command("revoke")
def tokens_revoke(ctx: typer.Context, name: str = typer.Argument(..., help="The token's name (or id).")) -> None:
    """Revoke a token: requests that carry it get 401 from now on."""
    with state(ctx).transaction() as session:
        n = revoke_token(session, name)
    typer.echo(f"{n} token(s) named {name!r} revoked")


# --- subscriptions

@subscriptions.command("add")
def subscriptions_add(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="Where to POST alerts (http or https)."),
    secret: str = typer.Option(..., "--secret", help="Shared secret; each POST carries X-Monitor-Signature: "
                               "sha256=HMAC-SHA256(secret, body)."),
    area: str = typer.Option(None, "--area", help="Only this area's alerts (default: every area)."),
    min_confidence: str = typer.Option("confirmed", "--min-confidence",
                                       help="confirmed (only alerts whose construction is still there on a clear "
                                            "date MONITOR_PERSIST_DAYS later; the default) or probable (every new "
                                            "alert, and its withdrawal when the place reverts)."),
) -> None:
    """Subscribe a URL to new and escalated alerts."""
    st = state(ctx)
    with st.transaction() as session:
        sub = add_subscription(session, url, secret, area=area, min_confidence=min_confidence,
                               allow_private_urls=st.settings.allow_private_urls)
        sub_id = sub.id
    typer.echo(f"subscription {sub_id}: {redact(url)} ({area or 'every area'}, {min_confidence} and up)")


@subscriptions.command("list")
def subscriptions_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List subscriptions with their deliveries by status (secrets are not shown)."""
    with state(ctx).transaction() as session:
        rows = list_subscriptions(session)
    if as_json:
        echo_json(rows)
    elif not rows:
        typer.echo("no subscriptions yet: add one with `monitor subscriptions add URL --secret S`")
    else:
        typer.echo(table([(r["id"], r["url"], r["area"] or "(all)", r["min_confidence"], r["deliveries"]["pending"],
                           r["deliveries"]["succeeded"], r["deliveries"]["failed"]) for r in rows],
                         ["id", "url", "area", "min_confidence", "pending", "succeeded", "failed"]))


@subscriptions.command("remove")
def subscriptions_remove(ctx: typer.Context, subscription_id: int = typer.Argument(..., help="The id shown by "
                                                                                    "`subscriptions list`.")) -> None:
    """Remove a subscription and its delivery history."""
    with state(ctx).transaction() as session:
        remove_subscription(session, subscription_id)
    typer.echo(f"subscription {subscription_id} removed")
