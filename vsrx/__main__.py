from vsrx.cli import main

main(prog_name="vsrx")
