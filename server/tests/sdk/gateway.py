"""Drives AEGIS's gateway mode with the unmodified official OpenAI and Anthropic SDKs (issue #19).

    python gateway.py <scenario>

Environment:
    AEGIS_OPENAI_BASE_URL     e.g. http://127.0.0.1:PORT/api/gw/openai/v1
    AEGIS_ANTHROPIC_BASE_URL  e.g. http://127.0.0.1:PORT/api/gw/claude  (the SDK adds /v1/messages)
    AEGIS_AGENT_KEY           the agent's AEGIS key, given to the SDK as its api_key
    AEGIS_SDK_EXTRA_HEADERS   optional JSON object of headers sent on every request
                              (e.g. {"x-mock-cached": "3"} for the mock provider)

Prints exactly one JSON object on stdout:
    {"scenario", "ok", "text", "usage", "chunks_with_usage", "status", "error_body",
     "stage", "code", "error", "aegis_request_id"}
ok is whether the SDK call succeeded; status/error_body/stage/code describe an HTTP error the
SDK raised (stage/code are read from the error body's top level, or its "error" object);
error is the SDK exception's text. Exits 0 unless the script itself crashed (bad usage,
a bug, an unexpected exception that is not an SDK error).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings

SCENARIOS = (
    "openai-chat",
    "openai-chat-stream",
    "openai-chat-stream-usage",
    "openai-responses",
    "openai-responses-stream",
    "openai-embeddings",
    "anthropic-messages",
    "anthropic-messages-stream",
    "openai-denied-model",
)

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
MESSAGES = [{"role": "user", "content": "Say hello to the AEGIS gateway."}]
TIMEOUT = 30.0
# The clients take no proxy or other settings from the environment (trust_env=False): the
# base URLs are the only network the harness uses.

# A provider that sends usage of the wrong type (the mock's malformed-usage) makes pydantic
# warn when dumping; the harness reports what arrived, the warning is noise.
warnings.filterwarnings("ignore", module="pydantic")


class Seen:
    """The last response's x-aegis-request-id, caught by an httpx event hook."""

    request_id: str | None = None

    def hook(self, response) -> None:  # httpx2.Response
        self.request_id = response.headers.get("x-aegis-request-id") or self.request_id


def dump(model) -> object:
    """A pydantic model (or None) as JSON data, only the fields the wire carried."""
    if model is None:
        return None
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", exclude_unset=True, warnings=False)
    return model


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"gateway.py: {name} is not set")
    return value


def extra_headers() -> dict[str, str] | None:
    raw = os.environ.get("AEGIS_SDK_EXTRA_HEADERS")
    return {str(k): str(v) for k, v in json.loads(raw).items()} if raw else None


def openai_client(seen: Seen):
    # Each scenario imports only the SDK it uses (importing anthropic takes seconds).
    import openai

    return openai.OpenAI(
        api_key=env("AEGIS_AGENT_KEY"),
        base_url=env("AEGIS_OPENAI_BASE_URL"),
        max_retries=0,
        timeout=TIMEOUT,
        default_headers=extra_headers(),
        http_client=openai.DefaultHttpxClient(event_hooks={"response": [seen.hook]}, trust_env=False),
    )


def anthropic_client(seen: Seen):
    import anthropic

    return anthropic.Anthropic(
        api_key=env("AEGIS_AGENT_KEY"),
        base_url=env("AEGIS_ANTHROPIC_BASE_URL"),
        max_retries=0,
        timeout=TIMEOUT,
        default_headers=extra_headers(),
        http_client=anthropic.DefaultHttpxClient(event_hooks={"response": [seen.hook]}, trust_env=False),
    )


def openai_chat(seen: Seen, model: str = OPENAI_MODEL) -> dict:
    reply = openai_client(seen).chat.completions.create(model=model, messages=MESSAGES, max_tokens=5)
    return {"text": reply.choices[0].message.content, "usage": dump(reply.usage)}


def openai_chat_stream(seen: Seen, include_usage: bool) -> dict:
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = openai_client(seen).chat.completions.create(
        model=OPENAI_MODEL, messages=MESSAGES, max_tokens=5, stream=True, **extra
    )
    text, usage, with_usage = "", None, 0
    for chunk in stream:
        # With include_usage the last chunk has no choices, only usage.
        for choice in chunk.choices:
            text += choice.delta.content or ""
        if getattr(chunk, "usage", None) is not None:
            with_usage += 1
            usage = dump(chunk.usage)
    return {"text": text, "usage": usage, "chunks_with_usage": with_usage}


def openai_responses(seen: Seen) -> dict:
    reply = openai_client(seen).responses.create(
        model=OPENAI_MODEL, input="Say hello to the AEGIS gateway.", max_output_tokens=5
    )
    return {"text": reply.output_text, "usage": dump(reply.usage)}


def openai_responses_stream(seen: Seen) -> dict:
    text, usage, with_usage = "", None, 0
    with openai_client(seen).responses.stream(
        model=OPENAI_MODEL, input="Say hello to the AEGIS gateway.", max_output_tokens=5
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.completed" and event.response.usage is not None:
                with_usage += 1
                usage = dump(event.response.usage)
        final = stream.get_final_response()
    if final.output_text != text:
        raise RuntimeError(f"streamed text {text!r} != final text {final.output_text!r}")
    return {"text": text, "usage": usage, "chunks_with_usage": with_usage}


def openai_embeddings(seen: Seen) -> dict:
    reply = openai_client(seen).embeddings.create(model="text-embedding-3-small", input="Hello, AEGIS.")
    # The SDK asks for base64 and decodes it to floats itself.
    return {"text": None, "usage": dump(reply.usage), "embedding": [round(x, 4) for x in reply.data[0].embedding]}


def anthropic_messages(seen: Seen) -> dict:
    reply = anthropic_client(seen).messages.create(model=ANTHROPIC_MODEL, max_tokens=7, messages=MESSAGES)
    text = "".join(block.text for block in reply.content if block.type == "text")
    return {"text": text, "usage": dump(reply.usage)}


def anthropic_messages_stream(seen: Seen) -> dict:
    text = ""
    with anthropic_client(seen).messages.stream(model=ANTHROPIC_MODEL, max_tokens=7, messages=MESSAGES) as stream:
        for delta in stream.text_stream:
            text += delta
        final = stream.get_final_message()
    final_text = "".join(block.text for block in final.content if block.type == "text")
    if final_text != text:
        raise RuntimeError(f"streamed text {text!r} != final text {final_text!r}")
    return {"text": text, "usage": dump(final.usage)}


def run(scenario: str, seen: Seen) -> dict:
    if scenario == "openai-chat":
        return openai_chat(seen)
    if scenario == "openai-chat-stream":
        return openai_chat_stream(seen, include_usage=False)
    if scenario == "openai-chat-stream-usage":
        return openai_chat_stream(seen, include_usage=True)
    if scenario == "openai-responses":
        return openai_responses(seen)
    if scenario == "openai-responses-stream":
        return openai_responses_stream(seen)
    if scenario == "openai-embeddings":
        return openai_embeddings(seen)
    if scenario == "anthropic-messages":
        return anthropic_messages(seen)
    if scenario == "anthropic-messages-stream":
        return anthropic_messages_stream(seen)
    if scenario == "openai-denied-model":
        # Expected to fail: the policy does not allow this model.
        return openai_chat(seen, model="gpt-not-allowed")
    raise AssertionError(scenario)


def error_fields(body: object) -> tuple[object, object]:
    """`stage` and `code` from an error body: top level first, then its "error" object."""
    if not isinstance(body, dict):
        return None, None
    inner = body.get("error") if isinstance(body.get("error"), dict) else {}
    return body.get("stage", inner.get("stage")), body.get("code", inner.get("code"))


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        print(f"usage: gateway.py <{'|'.join(SCENARIOS)}>", file=sys.stderr)
        return 2
    scenario = sys.argv[1]
    out = {
        "scenario": scenario,
        "ok": False,
        "text": None,
        "usage": None,
        "chunks_with_usage": 0,
        "status": None,
        "error_body": None,
        "stage": None,
        "code": None,
        "error": None,
        "aegis_request_id": None,
    }
    seen = Seen()
    sdk = importlib.import_module(scenario.split("-")[0])
    try:
        result = run(scenario, seen)
        out.update(result)
        out["ok"] = True
        if "chunks_with_usage" not in result:
            out["chunks_with_usage"] = 0 if result.get("usage") is None else 1
    except sdk.APIStatusError as e:
        out["status"] = e.status_code
        try:
            out["error_body"] = e.response.json()
        except Exception:  # not JSON: keep the text
            out["error_body"] = e.response.text
        out["stage"], out["code"] = error_fields(out["error_body"])
        out["error"] = str(e)
    except sdk.APIError as e:
        # Connection failures, timeouts, a stream that broke off or sent an error event.
        out["error"] = f"{type(e).__name__}: {e}"
    out["aegis_request_id"] = seen.request_id
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
