from modelstream.cli import app

app()
