# freeze.gp: histograms of bench/freeze.sh's freeze windows and write stalls,
# per method.  gnuplot -e "dir='DIR'; out='OUT.png'; width=W; nmodes=M"
# freeze.gp, with DIR/freeze-window.dat and DIR/freeze-stall.dat (a column per
# method, M of them) from "freeze.py dat".
set terminal pngcairo size 1100,800 font ",10"
set output out
set multiplot layout 2,1
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set key top right autotitle columnheader
set ylabel "events"
set xtics rotate by -45 scale 0
set grid ytics

set title sprintf("Freeze window (FIFREEZE to FITHAW), %g ms bins", width)
set xlabel "window, ms (bin start)"
plot for [c=2:nmodes+1] dir."/freeze-window.dat" using c:xtic(1) title columnhead(c)

set title sprintf("Longest write stall seen by fio during the window, %g ms bins", width)
set xlabel "stall, ms (bin start)"
plot for [c=2:nmodes+1] dir."/freeze-stall.dat" using c:xtic(1) title columnhead(c)
unset multiplot
