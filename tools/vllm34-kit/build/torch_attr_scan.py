"""List torch.<a>.<b>... attribute chains used in vLLM's Python source that torch 2.11 lacks."""
import re, os, sys, importlib, torch
root = sys.argv[1]
pat = re.compile(r"\btorch((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
uses = {}
for dp, dn, fn in os.walk(root):
    for f in fn:
        if f.endswith(".py"):
            p = os.path.join(dp, f)
            for i, line in enumerate(open(p, errors="ignore")):
                if line.lstrip().startswith("#"): continue
                for m in pat.finditer(line):
                    uses.setdefault(m.group(1), []).append(f"{os.path.relpath(p, root)}:{i+1}")
def resolve(chain):
    obj = torch; parts = chain.strip(".").split(".")
    for k, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except Exception:
            try:
                obj = importlib.import_module("torch." + ".".join(parts[:k+1]))
            except Exception:
                return ".".join(parts[:k+1]) if k >= 0 else None
        if callable(obj) and not isinstance(obj, type) and k < len(parts)-1 and not hasattr(obj, parts[k+1]):
            return None  # method call result, cannot check statically
    return None
missing = {}
for chain, where in uses.items():
    r = resolve(chain)
    if r and not r.startswith(("ops.", "ops")):
        missing.setdefault(r, []).extend(where)
for k in sorted(missing):
    print(k, len(missing[k]), " ".join(missing[k][:4]))
