"""The serving engine: how a request travels from an HTTP process to an inference worker and back.

The task APIs (bertserve/api/) say what a request means; this package moves it: the request queue
(request_queue.py), the hand-off from the event loop (submitter.py), the workers' batching loop (loop.py), the
answers' way back (transport.py), worker supervision (supervisor.py), admission (admission.py), and the one
module that touches LitServe's internals (litserve_seam.py).
"""
