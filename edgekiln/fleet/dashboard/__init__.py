"""The fleet dashboard: server-rendered pages of the fleet service, for operators.

``pages`` (the routes under ``/dashboard`` and the benchmark upload under
``/v1/benchmarks``), ``access`` (admin sign-in, session cookies, CSRF checks), ``views``
(what each page shows, read from the fleet store), ``tables`` (the dashboard's own
tables: sessions and uploaded benchmark results), ``charts`` (inline SVG),
``thumbs`` (thumbnails of captured input tensors and images).

Why server-rendered: the pages must work with no network but the fleet service's own, so
nothing comes from a CDN; charts are inline SVG drawn here, and the only script is
``static/refresh.js`` (written for edgekiln, no third-party code), which reloads the
page's main section every few seconds.  No JavaScript or CSS library is vendored.
Importing this package loads nothing.
"""
