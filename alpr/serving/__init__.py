"""Serving on Triton: the repository generator (``repository``), the launcher that supervises the server
(``server``), the real-inference health probe (``probe``) and the code of the Python steps (``steps``).

An installed package can generate a repository and serve it: nothing here reads the source checkout.
"""
