from swarmstack.cli.main import main

main()
