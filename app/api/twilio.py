"""Twilio's callbacks: delivery statuses and incoming texts (STOP/START).

The same rules as ever: a POST without a valid ``X-Twilio-Signature`` gets 403 and changes
nothing; what a callback changes is decided in ``app.webhook.receipts``.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.problems import Problem, responses
from app.domain.planning import utcnow
from app.providers.twilio import INBOUND_PATH, STATUS_CALLBACK_PATH
from app.webhook import receipts
from app.webhook.signatures import Form, Signatures

log = logging.getLogger("app.webhook")

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

router = APIRouter(tags=["twilio"])


Signature = Annotated[
    str | None,
    Header(
        alias="X-Twilio-Signature",
        description="HMAC-SHA1 with the auth token over WEBHOOK_BASE_URL + path and the form "
        "(a JSON body: over the URL with its bodySHA256 query)",
    ),
]


def _refused(path: str) -> Problem:
    log.warning("rejected %s with a missing or wrong X-Twilio-Signature", path)
    return Problem(403, "X-Twilio-Signature: missing or invalid")


async def _signed_form(request: Request, path: str, signature: str | None) -> Form:
    """The callback's fields, once its signature holds: a form post, or (status callbacks) a
    JSON object signed through ``bodySHA256``, its members taken as the form's fields."""
    body = await request.body()
    signatures: Signatures = request.app.state.signatures
    signature = request.headers.get("x-twilio-signature", "")
    query = request.url.query
    if _is_json(request):
        if not signatures.valid_body(path=path, query=query, body=body, signature=signature):
            raise _refused(path)
        return _json_fields(body)
    form = Form(parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    if not signatures.valid(path=path, query=query, form=form, signature=signature):
        raise _refused(path)
    return form


def _is_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _json_fields(body: bytes) -> Form:
    try:
        data = json.loads(body)
    except ValueError:
        raise Problem(400, "body: not valid JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "body: a JSON object expected")
    return Form(
        {
            str(k): [v if isinstance(v, str) else json.dumps(v)]
            for k, v in data.items()
            if v is not None
        }
    )


@router.post(
    STATUS_CALLBACK_PATH,
    status_code=204,
    response_class=Response,
    summary="Twilio's status callback (signed form post, or JSON signed through bodySHA256)",
    responses=responses(400, 403, 413),
)
async def twilio_status(request: Request, signature: Signature = None) -> Response:
    form = await _signed_form(request, STATUS_CALLBACK_PATH, signature)
    sid = form.one("MessageSid") or form.one("SmsSid")
    status = form.one("MessageStatus") or form.one("SmsStatus")
    if not sid or not status:
        raise Problem(400, "MessageSid and MessageStatus: both needed")
    await run_in_threadpool(
        receipts.record_delivery,
        request.app.state.engine,
        message_sid=sid,
        status=status.lower(),
        error_code=form.one("ErrorCode") or None,
        now=utcnow(),
        to=form.one("To") or None,
    )
    return Response(status_code=204)


@router.post(
    INBOUND_PATH,
    response_class=Response,
    summary="Twilio's incoming-text webhook (signed form post); answers empty TwiML",
    responses={200: {"content": {"text/xml": {}}}, **responses(400, 403, 413)},
)
async def twilio_inbound(request: Request, signature: Signature = None) -> Response:
    form = await _signed_form(request, INBOUND_PATH, signature)
    from_number, to_number = form.one("From"), form.one("To")
    if not from_number or not to_number:
        raise Problem(400, "From and To: both needed")
    await run_in_threadpool(
        lambda: receipts.handle_inbound(
            request.app.state.engine,
            request.app.state.settings,
            from_number=from_number,
            to_number=to_number,
            messaging_service_sid=form.one("MessagingServiceSid"),
            body=form.one("Body") or "",
            now=utcnow(),
        )
    )
    # Empty TwiML: no reply from us; Twilio's own opt-out handling sends the confirmation.
    return Response(EMPTY_TWIML, media_type="text/xml")
