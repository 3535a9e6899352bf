"""The admin console in the browser, at /console (`server.console.enabled`; off by default).

A static page and its assets from this package (vanilla ES modules and one stylesheet, hand-written SVG
charts: nothing vendored, nothing from another host), served with a strict Content-Security-Policy. The page
holds no data of its own: it logs in with the admin or master key, keeps it in the tab's sessionStorage, and
calls the admin API (`/admin/*`) with it as a bearer token, like any other client of that API.
"""
