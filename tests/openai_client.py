"""The official `openai` client, and LangChain's ChatOpenAI, against `tracelab serve` (run by
tests/serve.rs).

Usage: python tests/openai_client.py BASE_URL MODEL TOOLS_JSON
Exits non-zero with the failing check's message on stderr.
"""

import json
import sys

import httpx2 as httpx  # what openai 3 is built on
import openai
from openai import OpenAI

base_url, model, tools_path = sys.argv[1:4]
with open(tools_path) as f:
    raw_tools = json.load(f)
# The service functions, as an agent would declare them (the reply function is plain content).
tools = [
    {"type": "function", "function": {k: v for k, v in t["function"].items() if k != "x-kind"}}
    for t in raw_tools
    if t["function"].get("x-kind") != "respond" and t["function"]["name"] != "respond_to_user"
]
schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0)
ASK = [{"role": "user", "content": "I want Mexican food in Oakland."}]


def check_call(call):
    assert call.id, "every call has an id"
    assert call.type == "function"
    name = call.function.name
    assert name in schemas, f"unknown function {name}"
    args = json.loads(call.function.arguments)
    assert isinstance(args, dict), "arguments parse as a JSON object"
    required = schemas[name].get("required", [])
    missing = [r for r in required if r not in args]
    assert not missing, f"{name} misses required {missing}"
    extra = [k for k in args if k not in schemas[name].get("properties", {})]
    assert not extra, f"{name} has unknown arguments {extra}"
    return name, args


def stream_calls(**kw):
    """Accumulates streamed tool-call deltas by index, as agent frameworks do."""
    calls, finish, ids = {}, None, set()
    for chunk in client.chat.completions.create(model=model, stream=True, **kw):
        ids.add(chunk.id)
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                if d.id:
                    c["id"] = d.id
                if d.function and d.function.name:
                    c["name"] += d.function.name
                if d.function and d.function.arguments:
                    c["arguments"] += d.function.arguments
            finish = choice.finish_reason or finish
    assert len(ids) == 1, f"one id for the whole stream, got {ids}"
    return calls, finish


# /v1/models
assert [m.id for m in client.models.list().data] == [model]

# A tool call, not streamed; the tool result goes back as a `tool` message.
r = client.chat.completions.create(model=model, messages=ASK, tools=tools, tool_choice="required")
assert r.choices[0].finish_reason == "tool_calls", r
(call,) = r.choices[0].message.tool_calls
name, args = check_call(call)
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
ids = {call.id}

follow = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps([{"restaurant_name": "Casa Luna", "city": "Oakland"}])},
]
r2 = client.chat.completions.create(model=model, messages=follow, tools=tools)
m2 = r2.choices[0].message
# The follow-up begins with the first request's whole prompt: its cache is reused, and the usage
# says so as OpenAI's does.
assert r2.usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens, (r.usage, r2.usage)
assert m2.content or m2.tool_calls, r2
for c in m2.tool_calls or []:
    check_call(c)
    ids.add(c.id)

# Streamed: deltas by index, the id and name first, arguments in pieces.
calls, finish = stream_calls(messages=ASK, tools=tools, tool_choice="required",
                             stream_options={"include_usage": True})
assert finish == "tool_calls" and len(calls) == 1, (finish, calls)
c = calls[0]
assert c["id"] and c["id"] not in ids, "call ids are unique"
assert json.loads(c["arguments"]) == args, "the stream carries the same call"
assert c["name"] == name

# The stream() helper.
with client.chat.completions.stream(model=model, messages=ASK, tools=tools, tool_choice="required") as s:
    for _ in s:
        pass
    final = s.get_final_completion()
assert final.choices[0].message.tool_calls[0].function.name == name

# Sampling: temperature 0 is the greedy call; above 0 a seed decodes the same way again, every
# drawn call still fits the schema, and different seeds draw different calls.
def sampled(**kw):
    r = client.chat.completions.create(model=model, messages=ASK, tools=tools,
                                       tool_choice="required", **kw)
    return check_call(r.choices[0].message.tool_calls[0])


assert sampled(temperature=0) == (name, args)
assert sampled(temperature=1.5, seed=11) == sampled(temperature=1.5, seed=11)
drawn = [sampled(temperature=2.0, seed=s) for s in range(8)]
assert len({json.dumps(d, sort_keys=True) for d in drawn}) > 1, f"8 seeds, one call: {drawn}"
assert sampled(temperature=2.0, top_p=0.0, seed=3) == (name, args), "top_p 0 keeps the best token"

# tool_choice none: a reply, as content; also streamed.
r = client.chat.completions.create(model=model, messages=ASK, tools=tools, tool_choice="none")
assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
assert isinstance(r.choices[0].message.content, str)
calls, finish = stream_calls(messages=ASK, tools=tools, tool_choice="none")
assert finish == "stop" and not calls

# tool_choice naming a function: that function, also streamed.
other = sorted(schemas)[-1]
named = {"type": "function", "function": {"name": other}}
r = client.chat.completions.create(model=model, messages=ASK, tools=tools, tool_choice=named)
assert check_call(r.choices[0].message.tool_calls[0])[0] == other
calls, finish = stream_calls(messages=ASK, tools=tools, tool_choice=named)
assert calls[0]["name"] == other and finish == "tool_calls"

# A subset of the tools constrains the choice to it.
only = [t for t in tools if t["function"]["name"] == other]
r = client.chat.completions.create(model=model, messages=ASK, tools=only, tool_choice="required")
assert r.choices[0].message.tool_calls[0].function.name == other


# Bad requests: 4xx with an OpenAI-shaped error, and the server keeps serving.
def expect_error(status, fn):
    try:
        fn()
    except openai.APIStatusError as e:
        assert e.status_code == status, (e.status_code, e.response.text)
        body = e.response.json()
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
        return body["error"]
    raise AssertionError(f"expected HTTP {status}")


expect_error(404, lambda: client.chat.completions.create(model="gpt-4o", messages=ASK))
expect_error(400, lambda: client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "x"}]))
err = expect_error(400, lambda: client.chat.completions.create(
    model=model, messages=ASK,
    tools=[{"type": "function", "function": {"name": "BookFlight", "parameters": {"type": "object"}}}]))
assert "BookFlight" in err["message"], err
bad = httpx.post(base_url.rstrip("/") + "/chat/completions", content=b"{not json",
                 headers={"Content-Type": "application/json"})
assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json", bad.text
r = client.chat.completions.create(model=model, messages=ASK, tools=tools, tool_choice="required")
check_call(r.choices[0].message.tool_calls[0])

# LangChain's ChatOpenAI, pointed at the server, returns the call as `tool_calls`.
from langchain_openai import ChatOpenAI

llm = ChatOpenAI(base_url=base_url, api_key="unused", model=model, max_retries=0)
msg = llm.bind_tools(tools, tool_choice="required").invoke("I want Mexican food in Oakland.")
assert msg.tool_calls and msg.tool_calls[0]["name"] in schemas, msg
assert isinstance(msg.tool_calls[0]["args"], dict) and msg.tool_calls[0]["id"], msg

print("openai client: all checks passed")
