from writejobs.cli import main

main()
