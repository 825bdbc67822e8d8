"""The doors for clients people already use: OpenAI Chat Completions and Responses, the AI SDK stream.

Each dialect checks its request with the native API's validator (``server.inputs``) and does what
can fail (storing, posting) before any header is sent, so every refusal is a status in the
dialect's error shape; then it follows the answer through the node's one follow path
(``server.streaming``: headers, catch-up, live, end) and only translates events and errors.
"""
