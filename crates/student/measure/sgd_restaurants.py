# SGD Restaurants_1 train dialogues -> OpenAI chat JSONL (train.jsonl, test.jsonl), tools.json and
# pairs.jsonl in /tmp/sgdx, for the measurements in MEASUREMENTS.md (34 held-out dialogues, seed 0).
# Stand-in for the ingest/schema/split steps until they land; not part of the pipeline.
import json, glob, os, random
OUT = os.environ.get('OUT', '/tmp/sgdx'); os.makedirs(OUT, exist_ok=True)
dl = []
for f in sorted(glob.glob('/work/shared/sgd/train/dialogues_*.json')):
    for d in json.load(open(f)):
        if d['services'] == ['Restaurants_1']:
            dl.append(d)
print(len(dl), 'dialogues')
schema = [s for s in json.load(open('/work/shared/sgd/train/schema.json')) if s['service_name']=='Restaurants_1'][0]
slots = {s['name']: s for s in schema['slots']}
tools = []
for it in schema['intents']:
    props = {}
    for n in it['required_slots'] + list(it['optional_slots']):
        s = slots[n]; p = {'type': 'string', 'description': s['description']}
        if s['is_categorical']: p['enum'] = s['possible_values']
        props[n] = p
    tools.append({'type':'function','function':{'name':it['name'],'description':it['description'],
      'parameters':{'type':'object','properties':props,'required':it['required_slots'],'additionalProperties':False},
      'x-kind':'transaction' if it['is_transactional'] else 'search'}})
tools.append({'type':'function','function':{'name':'respond_to_user','description':'Send a message to the user.',
  'parameters':{'type':'object','properties':{'message':{'type':'string'}},'required':['message'],'additionalProperties':False},'x-kind':'respond'}})
json.dump(tools, open(OUT + '/tools.json','w'), indent=1)
def conv(d):
    msgs = []; n = 0
    for t in d['turns']:
        if t['speaker'] == 'USER':
            msgs.append({'role':'user','content':t['utterance']}); continue
        for fr in t['frames']:
            if 'service_call' in fr:
                sc = fr['service_call']; cid = f'call_{n}'; n += 1
                msgs.append({'role':'assistant','content':None,'tool_calls':[{'id':cid,'type':'function','function':{'name':sc['method'],'arguments':json.dumps(sc['parameters'])}}]})
                msgs.append({'role':'tool','tool_call_id':cid,'content':json.dumps(fr.get('service_results',[]))})
        cid = f'call_{n}'; n += 1
        msgs.append({'role':'assistant','content':None,'tool_calls':[{'id':cid,'type':'function','function':{'name':'respond_to_user','arguments':json.dumps({'message':t['utterance']})}}]})
    return {'id': d['dialogue_id'], 'messages': msgs}
rng = random.Random(0)
idx = list(range(len(dl))); rng.shuffle(idx)
test = [dl[i] for i in idx[:34]]; train = [dl[i] for i in idx[34:]]
with open(OUT + '/train.jsonl','w') as f:
    for d in train: f.write(json.dumps(conv(d))+'\n')
np_ = 0
with open(OUT + '/test.jsonl','w') as f, open(OUT + '/pairs.jsonl','w') as g:
    for d in test:
        c = conv(d); f.write(json.dumps(c)+'\n'); k = 0
        for i, m in enumerate(c['messages']):
            if m['role'] == 'assistant':
                fn = m['tool_calls'][0]['function']
                g.write(json.dumps({'id': f"{c['id']}#{k}", 'question': c['messages'][:i], 'answer': {'name': fn['name'], 'arguments': json.loads(fn['arguments'])}})+'\n'); k += 1; np_ += 1
print(len(train), 'train', len(test), 'test', np_, 'pairs')
