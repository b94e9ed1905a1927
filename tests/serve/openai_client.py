"""The official `openai` client against `medrl serve` (run by tests/serve.rs).

argv: BASE_URL EXPECTED.json. EXPECTED holds the model names, the prompts, and the greedy
outputs `medrl generate` gave for them (base model and adapter), so the server is checked
against an independent path through the same engine. Prints "ok: N checks" at the end; any
failed check raises.
"""

import json
import sys
import urllib.error
import urllib.request

import openai

base, expected_path = sys.argv[1], sys.argv[2]
exp = json.load(open(expected_path))
client = openai.OpenAI(base_url=base + "/v1", api_key=exp.get("api_key", "none"), max_retries=0, timeout=120)
MODEL, ADAPTER = exp["model"], exp["adapter"]
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


# Models: the base and its adapter.
ids = sorted(m.id for m in client.models.list().data)
check(ids == sorted([MODEL, ADAPTER]), f"models {ids}")

# Greedy chat equals `medrl generate --chat`, for the base and for the adapter.
def chat(model, prompt, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kw)

N_NEW = exp["max_tokens"]
for model, key in [(MODEL, "chat"), (ADAPTER, "adapter_chat")]:
    for prompt, want in zip(exp["prompts"], exp[key]):
        r = chat(model, prompt, temperature=0, max_tokens=N_NEW)
        c = r.choices[0]
        check(c.message.content == want["text"], f"{model} chat {prompt!r}: {c.message.content!r} != {want['text']!r}")
        check(c.message.role == "assistant", "role")
        check(c.finish_reason == ("length" if want["finish_reason"] == "length" else "stop"), f"finish {c.finish_reason} vs {want['finish_reason']}")
        check(r.usage.completion_tokens == want["tokens"], f"usage {r.usage} vs {want['tokens']} tokens")
        check(r.usage.prompt_tokens == want["prompt_tokens"], f"prompt tokens {r.usage.prompt_tokens} vs {want['prompt_tokens']}")
        check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "total")
        check(r.model == model and r.object == "chat.completion", "model/object")
check(exp["chat"][0]["text"] != exp["adapter_chat"][0]["text"], "the adapter changes the output")

# Greedy completions equal `medrl generate` without the chat template.
for prompt, want in zip(exp["prompts"], exp["completion"]):
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=N_NEW)
    check(r.choices[0].text == want["text"], f"completion {prompt!r}: {r.choices[0].text!r} != {want['text']!r}")
    check(r.object == "text_completion", "object")

# Streaming: the deltas add up to the whole answer; the role comes first; usage comes last.
prompt, want = exp["prompts"][0], exp["chat"][0]
parts, roles, finish, usage = [], [], None, None
for ch in chat(MODEL, prompt, temperature=0, max_tokens=N_NEW, stream=True, stream_options={"include_usage": True}):
    if ch.usage is not None:
        usage = ch.usage
    for c in ch.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check("".join(parts) == want["text"], f"stream {''.join(parts)!r} != {want['text']!r}")
check(roles == ["assistant"], f"roles {roles}")
check(finish is not None and usage is not None and usage.completion_tokens == want["tokens"], f"stream end {finish} {usage}")
parts = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt=exp["prompts"][1], temperature=0, max_tokens=N_NEW, stream=True) if c.choices]
check("".join(parts) == exp["completion"][1]["text"], "completion stream")

# n > 1 with a seed: reproducible, and a different seed gives other samples.
a = chat(MODEL, prompt, temperature=1.0, max_tokens=N_NEW, n=4, seed=1234)
b = chat(MODEL, prompt, temperature=1.0, max_tokens=N_NEW, n=4, seed=1234)
c = chat(MODEL, prompt, temperature=1.0, max_tokens=N_NEW, n=4, seed=99)
ta = [x.message.content for x in a.choices]
check(len(ta) == 4 and [x.index for x in a.choices] == [0, 1, 2, 3], "n=4 choices")
check(ta == [x.message.content for x in b.choices], "same seed, same samples")
check(ta != [x.message.content for x in c.choices], "another seed, other samples")
check(len(set(ta)) > 1, f"the 4 samples differ: {ta}")
check(4 <= a.usage.completion_tokens <= 4 * N_NEW, f"usage counts every choice: {a.usage}")
# A streamed n > 1 request gives the same samples as the whole one.
streamed = {}
for ch in chat(MODEL, prompt, temperature=1.0, max_tokens=N_NEW, n=4, seed=1234, stream=True):
    for x in ch.choices:
        streamed[x.index] = streamed.get(x.index, "") + (x.delta.content or "")
check([streamed[i] for i in range(4)] == ta, "streamed n=4 equals the whole response")

# Stop strings: the text ends before the first occurrence and the reason is "stop".
text = want["text"]
cut = next((i for i in range(len(text) // 2, len(text)) if text[i] not in " \n"), None)
if cut is not None and len(text) > 4:
    stop = text[cut:cut + 2]
    r = chat(MODEL, prompt, temperature=0, max_tokens=N_NEW, stop=[stop])
    got = r.choices[0].message.content
    check(got == text[: text.index(stop)], f"stop {stop!r}: {got!r}")
    check(r.choices[0].finish_reason == "stop", "stop reason")
    parts = []
    for ch in chat(MODEL, prompt, temperature=0, max_tokens=N_NEW, stop=stop, stream=True):
        parts.extend(x.delta.content or "" for x in ch.choices)
    check("".join(parts) == got, f"streamed stop {''.join(parts)!r} != {got!r}")

# Log-probabilities: greedy picks the most likely token, and its logprob is the top one.
r = chat(MODEL, prompt, temperature=0, max_tokens=N_NEW, logprobs=True, top_logprobs=3)
content = r.choices[0].logprobs.content
check(len(content) == r.usage.completion_tokens, "one logprob per token")
for t in content:
    check(len(t.top_logprobs) == 3, "3 alternatives")
    check(t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, f"greedy token is the top one: {t}")
    check(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob, "ordered")
r = client.completions.create(model=MODEL, prompt=exp["prompts"][0], temperature=0, max_tokens=5, logprobs=2)
lp = r.choices[0].logprobs
check(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens, "completion logprobs")
check(all(len(d) <= 2 for d in lp.top_logprobs), "2 alternatives")


# Bad requests: 4xx with a message naming the problem, and the server keeps serving.
def raw(body, path="/v1/chat/completions"):
    req = urllib.request.Request(base + path, data=body if isinstance(body, bytes) else json.dumps(body).encode(), headers={"content-type": "application/json", "authorization": "Bearer " + exp.get("api_key", "none")})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


msg = {"role": "user", "content": "hello"}
for body, status, needle in [
    (b"{\"model\": \"x\", \"messages\": [", 400, "malformed JSON"),
    ({"model": MODEL, "messages": [msg], "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL, "messages": [msg], "max_tokens": "ten"}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [msg], "max_tokens": -1}, 400, "max_tokens"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 20000}]}, 400, "tokens"),
    ({"model": MODEL, "messages": [msg], "n": 0}, 400, "n"),
    ({"model": "no-such-model", "messages": [msg]}, 404, "does not exist"),
]:
    code, err = raw(body)
    check(code == status, f"{body!r:.80}: HTTP {code} {err}")
    check(needle in err["error"]["message"], f"{needle!r} not in {err['error']['message']!r}")
try:
    chat(MODEL, "hi", max_tokens=-5)
    check(False, "the client raises on 400")
except openai.BadRequestError as e:
    check("max_tokens" in str(e), str(e))
code, err = raw({"model": MODEL, "prompt": ""}, "/v1/completions")
check(code == 400, "empty prompt")
# Still serving, and still the same greedy answer.
check(chat(MODEL, prompt, temperature=0, max_tokens=N_NEW).choices[0].message.content == want["text"], "serves after errors")
print(f"ok: {checks} checks")
