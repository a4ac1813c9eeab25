-- Inventory below reorder level (written in a hurry).
select p.sku,p.name , s.qty_on_hand, p.reorder_level
from products p join stock s on p.sku=s.sku
where s.qty_on_hand<p.reorder_level
order by 3 desc
