"""The socket API: newline-delimited JSON (MongoDB Extended JSON) over TCP and a Unix socket."""
