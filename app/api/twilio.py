"""Twilio's callbacks: delivery statuses and incoming texts (STOP/START).

The same rules as ever: a POST without a valid ``X-Twilio-Signature`` gets 403 and changes
nothing; what a callback changes is decided in ``app.webhook.receipts``.
"""

from __future__ import annotations

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
        description="HMAC-SHA1 with the auth token over WEBHOOK_BASE_URL + path and the form",
    ),
]


async def _signed_form(request: Request, path: str, signature: str | None) -> Form:
    raw = (await request.body()).decode("utf-8", errors="replace")
    form = Form(parse_qs(raw, keep_blank_values=True))
    signatures: Signatures = request.app.state.signatures
    signature = request.headers.get("x-twilio-signature", "")
    if not signatures.valid(path=path, query=request.url.query, form=form, signature=signature):
        log.warning("rejected %s with a missing or wrong X-Twilio-Signature", path)
        raise Problem(403, "X-Twilio-Signature: missing or invalid")
    return form


@router.post(
    STATUS_CALLBACK_PATH,
    status_code=204,
    response_class=Response,
    summary="Twilio's status callback (signed form post)",
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
