"""The serving engine: how a request travels from an HTTP process to an inference process and back.

The task APIs (bertserve/api/) say what a request means; this package moves it: the frames on the stream
(wire.py), the HTTP process's end of it (client.py), the inference process (process.py) and its batching
loop (worker.py), supervision (supervisor.py), admission (admission.py), and the one module that touches
LitServe's internals (litserve_seam.py).
"""
