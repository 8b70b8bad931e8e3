from edgeclf.cli.main import main

main()
