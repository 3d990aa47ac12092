from llavarad_cli.cli import main

main()
