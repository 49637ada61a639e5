"""Beyond one process: Durable Objects stay single across processes and machines.

``fastbind serve --workers N`` and a config's ``[cluster]`` table make a Runtime one of
several processes. Each Durable Object id has one owner among them (``members.py``,
``placement.py``); a stub anywhere else forwards the object's calls to it as hop
requests, the protocol of remote bindings (``forward.py``, over ``peers.py``), which
its server answers (``receive.py``); each process keeps its own shard of the storage
(``shards.py``). docs/scaling.md has the whole picture.
"""
