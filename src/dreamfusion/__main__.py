from dreamfusion.cli import main

main()
