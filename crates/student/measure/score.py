"""Scores a predictions.jsonl the way MEASUREMENTS.md reports it (no LLM judge):

- function: predicted function == reference function;
- service calls fully right: for pairs whose reference is not respond_to_user, every argument of
  the reference and the prediction agrees after normalization (case, spaces, times such as
  '6:30 pm' == '18:30');
- rubric-like score: 1 for a right respond_to_user function, 1 for a fully right service call,
  else 0 (an upper bound of the rubric judge, which may also fail replies that contradict tool
  results);
- baseline: the same score for 'always respond_to_user'.

Usage: score.py predictions.jsonl [respond_name]
"""
import json, re, sys

RESPOND = sys.argv[2] if len(sys.argv) > 2 else 'respond_to_user'


def norm(v):
    s = str(v).strip().lower()
    m = re.fullmatch(r'(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?', s)
    if m and (m.group(2) or m.group(3)):
        h, mi = int(m.group(1)), int(m.group(2) or 0)
        if m.group(3) and m.group(3).startswith('p') and h < 12:
            h += 12
        if m.group(3) and m.group(3).startswith('a') and h == 12:
            h = 0
        return f'{h:02d}:{mi:02d}'
    return re.sub(r'\s+', ' ', s)


rows = [json.loads(l) for l in open(sys.argv[1])]
n = len(rows)
fn = sum(r['prediction']['name'] == r['answer']['name'] for r in rows)
svc = [r for r in rows if r['answer']['name'] != RESPOND]
full = 0
args_right = args_total = 0
per_key = {}
for r in svc:
    a, p = r['answer']['arguments'], r['prediction']['arguments']
    ok = r['prediction']['name'] == r['answer']['name']
    for k in set(a) | set(p):
        good = k in a and k in p and norm(a[k]) == norm(p[k])
        if k in a:
            args_total += 1
            args_right += good
            t = per_key.setdefault(k, [0, 0]); t[0] += good; t[1] += 1
        ok = ok and good
    full += ok
resp = sum(r['answer']['name'] == RESPOND and r['prediction']['name'] == RESPOND for r in rows)
base = sum(r['answer']['name'] == RESPOND for r in rows)
out = {
    'pairs': n,
    'function_accuracy': round(fn / n, 4),
    'service_calls': len(svc),
    'service_calls_fully_right': full,
    'service_full_rate': round(full / max(1, len(svc)), 4),
    'service_arguments_right': f'{args_right}/{args_total}',
    'per_key': {k: f'{v[0]}/{v[1]}' for k, v in sorted(per_key.items())},
    'rubric_like': round((resp + full) / n, 4),
    'baseline_always_respond': round(base / n, 4),
}
print(json.dumps(out))
