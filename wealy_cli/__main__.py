from wealy_cli.cli import run

run()
