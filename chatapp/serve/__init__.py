"""`chatapp serve`: our engine behind the OpenAI API (routes in app.py, bodies in schema.py,
turns on the model in queue.py, response shapes in replies.py). Starlette, uvicorn and
sse-starlette are imported only here, so `chatapp --help` does not pay for them."""
