from writejobs.cli.main import main

main()
