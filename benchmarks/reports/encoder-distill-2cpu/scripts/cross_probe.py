"""Frozen cross-encoder probe: logistic regression on the [CLS] and the mean of the last layer of the (query, title)
pair encoded as one sequence (the way the relevance model reads it), no adapter; 1,500 training and 1,000 test pairs.

    python cross_probe.py demo/en,tax/es NAME=FOLDER ...     (output: cross-probe.txt)
"""
import sys
from pathlib import Path
import numpy as np, torch
from models.encoder_probe import load_frozen_encoder
from models.methods.probe import fit_logistic
from models.metrics import roc_auc
from models.pairs import mean_pool
from tasks.domain_text import load_marketplaces
from tasks.learner import to_pairs
torch.manual_seed(0)
mk = load_marketplaces(["/tmp/bench/demo", "/tmp/bench/tax"])
keys = sys.argv[1].split(",")
def feats(model, tok, pairs, n=None):
    q = list(pairs.queries)[:n]; p = list(pairs.titles)[:n]
    cls, mean = [], []
    with torch.no_grad():
        for i in range(0, len(q), 64):
            x = tok(q[i:i+64], p[i:i+64], padding=True, truncation=True, max_length=96, return_tensors="pt")
            h = model(**x).last_hidden_state
            cls.append(h[:, 0]); mean.append(mean_pool(h, x["attention_mask"]))
    return torch.cat(cls), torch.cat(mean)
for name, folder in (a.split("=", 1) for a in sys.argv[2:]):
    model, tok = load_frozen_encoder(Path(folder))
    row = []
    for k in keys:
        tr, te = to_pairs(mk[k].train), to_pairs(mk[k].test)
        ctr, mtr = feats(model, tok, tr, 1500); cte, mte = feats(model, tok, te, 1000)
        y = torch.as_tensor(np.asarray(tr.labels[:1500]))
        for a, b in ((ctr, cte), (mtr, mte)):
            head = fit_logistic(a, y)
            with torch.no_grad():
                s = torch.sigmoid(head(b).squeeze(-1)).numpy()
            row.append(roc_auc(list(te.labels[:1000]), s))
    print(name.ljust(12), " ".join(f"{k}: cls {row[2*i]:.4f} mean {row[2*i+1]:.4f}" for i, k in enumerate(keys)), flush=True)
